"""engine.tensorboard: the records of metrics.jsonl also go to <run>/tensorboard/ as scalars."""
import builtins
import json

import pytest

import longtail.engine.runner as runner
from longtail.errors import ConfigError

from .conftest import config, tiny_dataset


@pytest.fixture(autouse=True)
def fake_data(monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)


def test_tensorboard_scalars_match_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner.run_config(config(tmp_path, "crt", "stages.0.epochs=2", "stages.1.epochs=2", "stages.1.optimizer.lr=0.01",
                             "engine.tensorboard=true",
                             "eval.every=1"))
    run_dir = tmp_path / "crt" / "seed0"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"stage1/loss", "stage1/train_acc", "stage1/lr", "stage1/test_top1", "crt/loss"} <= tags
    for record in records:
        for key in ("loss", "train_acc", "test_top1"):
            (value,) = [e.value for e in events.Scalars(f"{record['stage']}/{key}") if e.step == record["epoch"]]
            assert value == pytest.approx(record[key], rel=1e-6)


def test_tensorboard_is_off_by_default(tmp_path):
    runner.run_config(config(tmp_path, "ce", "stages.0.epochs=1"))
    assert not (tmp_path / "ce" / "seed0" / "tensorboard").exists()


def test_tensorboard_without_the_package_names_the_extra(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"engine.tensorboard: true needs the tensorboard package: "
                                          r"pip install 'longtail\[tensorboard\]'"):
        runner.run_config(config(tmp_path, "ce", "engine.tensorboard=true"))
    assert not (tmp_path / "ce" / "seed0" / "metrics.jsonl").exists()  # before any training
