"""Checkpoints hold tensors and plain values only and load with torch.load(weights_only=True);
a file with pickled objects is refused with the fix."""
import numpy as np
import pytest
import torch
import yaml

import longtail.engine.runner as runner
from longtail.config import to_dict
from longtail.engine.checkpoint import atomic_save, load_checkpoint, plain
from longtail.errors import TrainingError

from .conftest import config, tiny_dataset


@pytest.fixture(autouse=True)
def fake_data(monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)


def test_every_checkpoint_a_run_writes_loads_with_weights_only(tmp_path):
    """checkpoint.pt (periodic, mid-stage: optimizer and loss state, RNG) and the stage files of a
    two-stage run whose stage options carry values of its own (MaxNorm's threshold)."""
    cfg = config(tmp_path, "wd_maxnorm_cb", "stages.0.epochs=3", "stages.1.epochs=1", "engine.checkpoint_every=2")
    original = runner.RunFolder.save
    saved = []

    def save_and_reload(self, ctx, stage_index, epoch, trainer):
        original(self, ctx, stage_index, epoch, trainer)
        saved.append(torch.load(self.run_dir / "checkpoint.pt", weights_only=True))  # no allowlist at all

    runner.RunFolder.save = save_and_reload
    try:
        runner.run_config(cfg)
    finally:
        runner.RunFolder.save = original
    assert any(s["trainer"] is not None for s in saved)  # a mid-stage checkpoint, with optimizer state
    files = sorted((tmp_path / "wd_maxnorm_cb" / "seed0").glob("*.pt"))
    assert len(files) == 3
    for path in files:
        torch.load(path, weights_only=True)


class Marker:
    """Any class of the user's: weights_only refuses to rebuild it."""


def test_a_checkpoint_holding_a_pickled_object_is_refused_with_the_fix(tmp_path):
    run_dir = tmp_path / "ce" / "seed0"
    run_dir.mkdir(parents=True)
    cfg = config(tmp_path)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))  # the folder of this config
    torch.save({"stage": 0, "epoch": 1, "extra": Marker()}, run_dir / "checkpoint.pt")
    with pytest.raises(TrainingError, match=r"checkpoint .*checkpoint.pt contains pickled Python objects "
                                            r"\(.*Marker\).*weights_only=True.*re-save it"):
        runner.run_config(cfg)


def test_a_damaged_checkpoint_is_called_unreadable(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match=r"bad.pt is unreadable \(not a torch checkpoint file\).*Move it aside") as err:
        load_checkpoint(tmp_path / "bad.pt")
    assert "delete" not in str(err.value)


def test_a_checkpoint_the_device_cannot_take_is_not_called_unreadable(tmp_path):
    """A valid file on a missing device: the cause is kept and nobody is told to delete it."""
    atomic_save({"model": {"w": torch.ones(2)}}, tmp_path / "ok.pt")
    with pytest.raises(TrainingError, match=r"ok.pt is intact but cannot be loaded onto cuda:7 \(RuntimeError: .*\); "
                                            r"run where that device exists.*engine.device=cpu") as err:
        load_checkpoint(tmp_path / "ok.pt", map_location="cuda:7")
    assert "unreadable" not in str(err.value) and "delete" not in str(err.value)


def test_plain_converts_numpy_and_dataclasses_and_refuses_other_objects(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Point:
        x: float

    out = plain({"a": np.float64(1.5), "b": np.arange(3), "c": (np.int64(2), [Point(np.float32(0.5))])})
    assert out["a"] == 1.5 and type(out["a"]) is float and torch.equal(out["b"], torch.arange(3))
    assert out["c"] == (2, [{"x": 0.5}])
    state = torch.nn.BatchNorm1d(2).state_dict()
    assert plain(state) is state  # unchanged, _metadata (module versions) kept
    with pytest.raises(TypeError, match=r"checkpoint\['k'\]\[0\] is a .*Marker; checkpoints hold tensors"):
        atomic_save({"k": [Marker()]}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
