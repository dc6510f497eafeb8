"""The dataset registry (data/factory.py) and datasets injected from Python (issue 27 item 5)."""
from __future__ import annotations

import numpy as np
import pytest

from longtail.config import DataConfig, load_config
from longtail.data.dataset import ArraySplit, LongTailedDataset
from longtail.data.factory import DATASETS, dataset_items, load_dataset, register_dataset
from longtail.engine.runner import run_config
from longtail.errors import ConfigError


def _features(n_per_class=(12, 6, 3), dim=5) -> LongTailedDataset:
    rng = np.random.default_rng(0)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    x = (rng.normal(size=(len(y), dim)) + 3 * y[:, None]).astype(np.float32)
    yt = np.repeat(np.arange(len(n_per_class)), 4)
    xt = (rng.normal(size=(len(yt), dim)) + 3 * yt[:, None]).astype(np.float32)
    return LongTailedDataset("mine", len(n_per_class), ["a", "b", "c"], ArraySplit(x, y), ArraySplit(xt, yt))


def test_every_dataset_is_registered_with_what_its_items_are():
    assert {"digits", "cifar10", "cifar100", "newsgroups", "text", "features", "prepared", "splitfile",
            "folder"} <= set(DATASETS)
    assert [dataset_items(n) for n in ("cifar10", "text", "folder")] == ["images", "features", "streamed"]
    with pytest.raises(ConfigError, match="did you mean 'cifar10'"):
        load_dataset(DataConfig(dataset="cifar01"))


def test_a_new_dataset_registers_a_builder_and_loads_by_name(monkeypatch):
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))  # registered for this test only
    register_dataset("mine", items="features")(lambda config: _features())
    assert load_dataset(DataConfig(dataset="mine")).name == "mine" and dataset_items("mine") == "features"


def test_a_dataset_built_in_python_is_injected_into_a_run(tmp_path):
    config = load_config(mapping={"method": "ce", "name": "injected"},
                         overrides=[f"output_dir={tmp_path}", "model.encoder=identity", "stages.0.epochs=3",
                                    "stages.0.schedule.milestones=[]", "stages.0.batch_size=8", "stages.0.augment=none",
                                    "engine.device=cpu", "engine.progress=false"])
    results = run_config(config, dataset=_features())
    assert results["class_names"] == ["a", "b", "c"] and len(results["test"]["per_class_accuracy"]) == 3
    assert results["test"]["num_samples"] == 12  # the injected test split, not digits
