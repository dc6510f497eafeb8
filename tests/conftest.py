"""Shared test set-up: small CPU workloads run fastest on one thread (and do not oversubscribe);
the real CIFAR-10 folder, unpacked once per session; the tiny synthetic dataset and run config
that many test files share (plain functions: ``from tests.conftest import tiny_dataset``)."""
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.config import load_config
from longtail.data.dataset import ArraySplit, LongTailedDataset
from longtail.losses import LOSSES

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

COUNTS = [48, 24, 12, 6]


def tiny_dataset(_config=None, val: bool = False) -> LongTailedDataset:
    """4 classes whose 8x8 images differ in brightness, so a few epochs learn something;
    ``val``: also a balanced validation split of 8 per class."""
    rng = np.random.default_rng(0)

    def make(labels):
        base = rng.integers(0, 40, (len(labels), 3, 8, 8))
        return (base + 60 * labels[:, None, None, None]).astype(np.uint8)

    y = np.concatenate([np.full(n, c) for c, n in enumerate(COUNTS)])
    yt = np.repeat(np.arange(4), 8)
    yv = np.repeat(np.arange(4), 8)
    return LongTailedDataset("tiny", 4, list("abcd"), ArraySplit(make(y), y), ArraySplit(make(yt), yt),
                             val=ArraySplit(make(yv), yv) if val else None,
                             mean=(0.5,) * 3, std=(0.25,) * 3, meta={"source": "test"})


def config(tmp_path, method="ce", *extra):
    """A short run of ``method`` (4 epochs, batch 16, a checkpoint every 2) under ``tmp_path``."""
    return load_config(
        mapping={"method": method, "name": method},
        overrides=[
            f"output_dir={tmp_path}", "engine.progress=false", "stages.0.epochs=4", "stages.0.batch_size=16",
            "stages.0.schedule.milestones=[]", "stages.0.schedule.warmup_epochs=1", "engine.checkpoint_every=2",
            "model.encoder=resnet20", *extra,
        ],
    )


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def real_cifar_root(tmp_path_factory) -> Path:
    """A data root holding the real ``cifar-10-batches-py``: the repository's ``.data`` when it is
    unpacked there, else the shared tarball unpacked once for the session (skip when absent)."""
    if (REPO / ".data" / "cifar-10-batches-py" / "test_batch").is_file():
        return REPO / ".data"
    tarball = SHARED / "data" / "cifar-10-python.tar.xz"
    if not tarball.is_file():
        pytest.skip(f"{tarball} is absent")
    root = tmp_path_factory.mktemp("cifar")
    with tarfile.open(tarball) as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.fixture
def register_loss(monkeypatch):
    """``register_loss(name, cls)``: ``cls`` in the loss registry for this test only (the registry
    is restored afterwards, so no test leaves a loss behind for the others)."""
    monkeypatch.setattr(LOSSES, "_items", dict(LOSSES._items))
    return lambda name, cls: LOSSES.register(name)(cls)


def interrupt_at(monkeypatch, epoch: int, stage: str | None = None) -> None:
    """The next training stops with Ctrl-C (as a kill would) at the start of 0-based ``epoch`` of
    the stage named ``stage`` (any stage when None); training is as before once it has stopped."""
    from longtail.engine.trainer import Trainer

    original = Trainer.run_epoch

    def run_epoch(self, e):
        if e == epoch and stage in (None, self.plan.name):
            monkeypatch.setattr(Trainer, "run_epoch", original)
            raise KeyboardInterrupt
        return original(self, e)

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
