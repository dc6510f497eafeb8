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


class ClassCountedDataset:
    """What in-memory and file-backed datasets share: class counts from the training split and
    the label checks (labels within 0..C-1, no empty class)."""

    name: str
    num_classes: int

    def check_labels(self) -> None:
        for split_name in ("train", "test", "val"):
            split = getattr(self, split_name)
            if split is None or not len(split):
                continue
            low, high = int(split.y.min()), int(split.y.max())
            if low < 0 or high >= self.num_classes:
                raise DataError(
                    f"{self.name} {split_name} labels span [{low}, {high}] but the dataset has {self.num_classes} "
                    f"classes (labels 0..{self.num_classes - 1}); remap the labels, set num_classes, or use "
                    "the split list that matches the training list"
                )
        empty = np.flatnonzero(self.class_counts == 0)
        if empty.size:
            raise DataError(
                f"{self.name}: classes {empty.tolist()[:10]} have no training samples; every class needs "
                "at least one (lower the imbalance factor, fix the training list, or drop the class)"
            )

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.train.y, minlength=self.num_classes)

    @property
    def imbalance_factor(self) -> float:
        counts = self.class_counts
        return float(counts.max() / counts.min())


@dataclass
class LongTailedDataset(ClassCountedDataset):
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
        self.check_labels()

    @property
    def is_image(self) -> bool:
        return self.train.x.ndim == 4
