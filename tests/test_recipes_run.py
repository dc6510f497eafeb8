"""Every packaged recipe trains end to end (one short epoch per stage on the tiny synthetic data):
a recipe that only loads is not enough to spend GPU time on."""
import math

import pytest

import longtail.engine.runner as runner
from longtail.config import load_config, method_names
from tests.conftest import tiny_dataset

RECIPES = [m for m in method_names() if m != "digits_default"]


@pytest.mark.parametrize("method", RECIPES)
def test_every_packaged_recipe_trains_end_to_end(tmp_path, monkeypatch, method):
    monkeypatch.setattr(runner, "load_dataset", lambda _config: tiny_dataset(val=True))
    stages = load_config(mapping={"method": method}).stages
    overrides = [f"output_dir={tmp_path}", "engine.progress=false", "engine.checkpoint_every=0", "model.encoder=resnet20",
                 "data.val_per_class=8"]
    for i in range(len(stages)):
        overrides += [f"stages.{i}.epochs=1", f"stages.{i}.iterations=0", f"stages.{i}.batch_size=16",
                      f"stages.{i}.schedule.milestones=[]", f"stages.{i}.schedule.warmup_epochs=0"]
    results = runner.run_config(load_config(mapping={"method": method, "name": method}, overrides=overrides))
    assert [t["stage"] for t in results["timings"]] == [s.name for s in stages]
    assert math.isfinite(results["test"]["top1"]) and len(results["test"]["per_class_accuracy"]) == 4
