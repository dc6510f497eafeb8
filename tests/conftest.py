"""Shared test set-up: small CPU workloads run fastest on one thread (and do not oversubscribe)."""
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED
