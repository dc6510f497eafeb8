"""A new two-stage method is written outside the engine (issue 27): a stage kind registered by the
user, with an epoch-valued option it declares, runs after a supervised stage; epoch_scale moves the
declared option and nothing else; the run folder records both stages."""
import pytest

from longtail.config import load_config
from longtail.engine.runner import run_config
from longtail.engine.stages import STAGE_KINDS, SupervisedStage
from tests.conftest import tiny_dataset


@pytest.fixture
def stage_kinds(monkeypatch):
    monkeypatch.setattr(STAGE_KINDS, "_items", dict(STAGE_KINDS._items))  # registered for this test only


def method(tmp_path, *extra):
    return load_config(
        mapping={
            "name": "example",
            "output_dir": str(tmp_path),
            "model": {"encoder": "resnet8"},
            "stages": [
                {"name": "stage1", "epochs": 4, "batch_size": 16, "schedule": {"name": "constant"}},
                {"name": "rebalance", "kind": "balanced_finetune", "epochs": 4,
                 "batch_size": 16, "sampler": {"name": "class_balanced"}, "schedule": {"name": "constant"},
                 "options": {"warm_epochs": 2, "label": 2}},
            ],
            "engine": {"device": "cpu", "progress": False},
        },
        overrides=list(extra),
    )


def test_a_two_stage_method_defined_outside_the_engine_trains_and_scales(tmp_path, stage_kinds):
    seen = {}

    @STAGE_KINDS.register("balanced_finetune")
    class BalancedFinetune(SupervisedStage):
        """Example stage 2: fine-tune class-balanced; ``warm_epochs`` holds epochs."""

        epoch_options = ("warm_epochs",)

        def build(self, ctx, stage):
            seen["options"] = dict(stage.options)
            return super().build(ctx, stage)

    scaled = method(tmp_path, "epoch_scale=0.5")
    assert scaled.stages[1].epochs == 2 and scaled.stages[1].options == {"warm_epochs": 1, "label": 2}  # declared key scaled, the other not
    results = run_config(method(tmp_path), dataset=tiny_dataset())
    assert seen["options"] == {"warm_epochs": 2, "label": 2}
    assert [t["stage"] for t in results["timings"]] == ["stage1", "rebalance"]
    run_dir = tmp_path / "example" / "seed0"
    assert (run_dir / "stage0_stage1.pt").is_file() and (run_dir / "stage1_rebalance.pt").is_file()
    assert 0.0 <= results["test"]["top1"] <= 100.0
