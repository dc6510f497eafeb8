"""The in-memory long-tailed dataset that every loader and method consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError


@dataclass
class ArraySplit:
    """One split held in memory.

    ``x``: uint8 images ``N×C×H×W`` (channel-first) or float32 features ``N×D``.
    ``y``: int64 labels ``(N,)``. ``indices``: positions in the source split (provenance).
    """

    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.int64)
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"split has {self.x.shape[0]} inputs but {self.y.shape[0]} labels; "
                "each input needs exactly one label"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class LongTailedDataset:
    """Train/val/test splits plus what is needed to reproduce and describe them."""

    name: str
    num_classes: int
    class_names: list[str]
    train: ArraySplit
    test: ArraySplit
    val: ArraySplit | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split_name, split in (("train", self.train), ("test", self.test), ("val", self.val)):
            if split is None:
                continue
            if len(split) and (split.y.min() < 0 or split.y.max() >= self.num_classes):
                raise DataError(
                    f"{self.name} {split_name} labels span [{split.y.min()}, {split.y.max()}] "
                    f"but the dataset has {self.num_classes} classes (labels 0..{self.num_classes - 1}); "
                    "remap the labels or set num_classes"
                )
        empty = np.flatnonzero(self.class_counts == 0)
        if empty.size:
            raise DataError(
                f"{self.name}: classes {empty.tolist()[:10]} have no training samples; "
                "every class needs at least one (lower the imbalance factor or drop the class)"
            )

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.train.y, minlength=self.num_classes)

    @property
    def is_image(self) -> bool:
        return self.train.x.ndim == 4

    @property
    def imbalance_factor(self) -> float:
        counts = self.class_counts
        return float(counts.max() / counts.min())
