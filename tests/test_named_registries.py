"""Learning-rate schedules, batch mixing and augmentations are registries (issue 27 item 5): each lists
the packaged names, and a name registered by the user works from a config like a packaged one."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import longtail.engine.runner as runner
from longtail.config import ScheduleConfig, StageConfig, load_config
from longtail.data.augmentations import AUGMENTATIONS, Augmentation, build_augment, file_transforms
from longtail.data.files import train_transform
from longtail.data.mixing import MIXING, MixedBatch, MixingScheme, check_mixing
from longtail.engine.schedules import SCHEDULES, Schedule, epoch_factor, factor_table
from longtail.engine.stacked import _schedule_key
from longtail.engine.stages import _mixer, check_stage_specs
from longtail.errors import ConfigError
from tests.conftest import config, tiny_dataset

IMAGES = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def registries(monkeypatch):
    """The three registries, restored after the test (no test leaves a name behind)."""
    for registry in (SCHEDULES, MIXING, AUGMENTATIONS):
        monkeypatch.setattr(registry, "_items", dict(registry._items))
    return SimpleNamespace(schedules=SCHEDULES, mixing=MIXING, augmentations=AUGMENTATIONS)


def test_the_registries_list_the_packaged_names():
    assert SCHEDULES.names() == ["constant", "cosine", "multistep"]
    assert MIXING.names() == ["mixup", "remix"]
    assert AUGMENTATIONS.names() == ["autoaugment", "crop_flip", "none", "randaugment"]


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(ConfigError, match=r"schedule.name 'cosin' \(did you mean 'cosine'\?\) is not one of "
                                          "constant, cosine, multistep"):
        load_config(None, ["stages.0.schedule.name=cosin"])
    with pytest.raises(ConfigError, match=r"unknown mixing 'mixpu' \(did you mean 'mixup'\?\); valid: mixup, remix"):
        check_mixing({"name": "mixpu"})
    with pytest.raises(ConfigError, match=r"unknown augment 'crop' .*; valid: autoaugment, crop_flip, none, randaugment"):
        build_augment("crop", torch.device("cpu"))


@pytest.mark.parametrize("schedule", [
    ScheduleConfig(name="multistep", milestones=[2]), ScheduleConfig(name="multistep"),
    ScheduleConfig(name="cosine", milestones=[2]), ScheduleConfig(name="constant"),
])
def test_stacking_compares_the_schedule_keys_it_did_before(schedule):
    expected = {"name", "warmup_epochs", "milestones", "gamma", "final_lr"}
    if schedule.name != "multistep" or not schedule.milestones:
        expected.discard("gamma")
    if schedule.name != "cosine":
        expected.discard("final_lr")
    assert set(_schedule_key(schedule)) == expected


# ---------------------------------------------------------------- a user's own names


class Half(Schedule):
    """Half the base learning rate after the warm-up (reads no field of its own)."""

    @staticmethod
    def factor(schedule, epoch, epochs, base_lr):
        return 0.5


class Swap(MixingScheme):
    """Each image swapped with its mirror in the batch, the label weight ``weight`` on its own."""

    calls = 0

    @staticmethod
    def mix(x, y, weight=0.5, generator=None):
        Swap.calls += 1
        return MixedBatch(x.flip(0), y, y.flip(0), torch.full((len(y),), weight))

    @classmethod
    def check(cls, options):
        if not 0 <= options.get("weight", 0.5) <= 1:
            raise ConfigError("weight must be in 0..1")


class CountWeighted(MixingScheme):
    uses_counts = True

    @staticmethod
    def mix(x, y, class_counts, generator=None):
        return MixedBatch(x, y, y, class_counts[y].float() / class_counts.max())


class Invert(Augmentation):
    """``amount - image`` on in-memory images (none for images streamed from disk)."""

    calls = 0

    @staticmethod
    def build(device, amount=255):
        if not 0 <= amount <= 255:
            raise ValueError(f"amount must be in 0..255, got {amount}")

        def invert(x):
            Invert.calls += 1
            return (amount - x.int()).clamp(0, 255).to(torch.uint8)

        return invert


def test_a_registered_schedule_is_a_valid_config_name_with_its_factors(registries):
    registries.schedules.register("half")(Half)
    stage = load_config(None, ["stages.0.schedule={name: half, warmup_epochs: 2}", "stages.0.epochs=4"]).stages[0]
    assert stage.schedule.name == "half"
    assert [epoch_factor(stage.schedule, e, 4, 0.1) for e in range(4)] == [0.5, 1.0, 0.5, 0.5]
    assert factor_table(stage.schedule, 4, 2, 0.1).tolist() == [0.5, 0.5, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    assert set(_schedule_key(stage.schedule)) == {"name", "warmup_epochs", "milestones", "gamma", "final_lr"}
    with pytest.raises(ConfigError, match="is not one of constant, cosine, half, multistep"):
        load_config(None, ["stages.0.schedule.name=halve"])


def test_a_registered_mixing_scheme_is_checked_and_built_from_a_config(registries):
    registries.mixing.register("swap")(Swap)
    registries.mixing.register("count_weighted")(CountWeighted)
    stage = load_config(None, ["stages.0.mixing={name: swap, weight: 0.25}"]).stages[0]
    check_stage_specs(stage)
    x, y = torch.arange(12.0).view(4, 3), torch.tensor([0, 1, 2, 3])
    batch = _mixer(None, stage.mixing)(x, y)
    assert torch.equal(batch.x, x.flip(0)) and batch.y_b.tolist() == [3, 2, 1, 0] and batch.lam.tolist() == [0.25] * 4
    with pytest.raises(ConfigError, match=r"unknown option 'wieght' for mixing 'swap' \(did you mean 'weight'\?\)"):
        check_mixing({"name": "swap", "wieght": 0.5})
    with pytest.raises(ConfigError, match="stage 'stage1': weight must be in 0..1"):
        check_stage_specs(StageConfig(mixing={"name": "swap", "weight": 2}))
    ctx = SimpleNamespace(counts_tensor=lambda: torch.tensor([8, 4, 2, 1]))
    assert _mixer(ctx, {"name": "count_weighted"})(x, y).lam.tolist() == [1.0, 0.5, 0.25, 0.125]


def test_a_registered_augmentation_is_checked_and_built_from_a_config(registries):
    registries.augmentations.register("invert")(Invert)
    stage = load_config(None, ["stages.0.augment={name: invert, amount: 200}"]).stages[0]
    out = build_augment(stage.augment, torch.device("cpu"))(IMAGES)
    assert torch.equal(out, (200 - IMAGES.int()).clamp(0, 255).to(torch.uint8))
    assert torch.equal(build_augment("invert", torch.device("cpu"))(IMAGES), 255 - IMAGES)
    with pytest.raises(ConfigError, match=r"unknown option 'amout' for augment 'invert' \(did you mean 'amount'\?\)"):
        build_augment({"name": "invert", "amout": 3}, torch.device("cpu"))
    with pytest.raises(ConfigError, match="augment 'invert': amount must be in 0..255"):
        build_augment({"name": "invert", "amount": 300}, torch.device("cpu"))
    with pytest.raises(ConfigError, match="augment 'invert' applies to in-memory images only"):
        file_transforms("invert")
    assert file_transforms("none") is None and file_transforms("crop_flip") == []
    assert len(train_transform(8, (0.5,) * 3, (0.25,) * 3, "randaugment").transforms) == 6


def test_registered_names_train_a_run(tmp_path, monkeypatch, registries):
    registries.schedules.register("half")(Half)
    registries.mixing.register("swap")(Swap)
    registries.augmentations.register("invert")(Invert)
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)
    Swap.calls = Invert.calls = 0
    cfg = config(tmp_path, "ce", "stages.0.epochs=1", "stages.0.schedule={name: half}",
                 "stages.0.mixing={name: swap}", "stages.0.augment=invert", "engine.device=cpu")
    runner.run_config(cfg)
    assert Swap.calls > 0 and Invert.calls > 0
    records = [json.loads(line) for line in (tmp_path / "ce" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs and lrs[-1] == pytest.approx(0.5 * cfg.stages[0].optimizer.lr)
