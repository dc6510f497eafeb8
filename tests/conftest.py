"""Shared test set-up: small CPU workloads run fastest on one thread (and do not oversubscribe);
the real CIFAR-10 folder, unpacked once per session."""
import tarfile
from pathlib import Path

import pytest
import torch

from longtail.losses import LOSSES

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


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
