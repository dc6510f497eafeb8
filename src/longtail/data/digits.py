"""The built-in default dataset: scikit-learn's handwritten digits made long-tailed (no download).

``sklearn.datasets.load_digits`` ships 1,797 8×8 grey images of 10 classes (174–183 per class)
inside the package, so every recipe can run end to end on any machine in seconds.
"""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from ..errors import DataError
from .cifar import indices_sha256, select_long_tailed, subset_meta
from .dataset import ArraySplit, LongTailedDataset
from .profiles import build_profile
from .validation import split_validation


def _balanced_test_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(test, rest)`` indices: ``int(test_fraction * smallest class)`` random images of every class."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    per_class = int(test_fraction * np.bincount(labels).min())
    if per_class < 1:
        raise DataError(f"test_fraction={test_fraction} leaves no test image per class; raise it")
    rng = np.random.RandomState(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(labels.max() + 1)])
    return test, np.setdiff1d(np.arange(labels.size), test)


def build_digits_lt(
    imbalance_factor: float = 10,
    profile: str = "exp",
    seed: int = 0,
    test_fraction: float = 0.3,
    val_per_class: int = 0,
) -> LongTailedDataset:
    """Digits-LT: a seeded balanced test split first (``int(test_fraction × 174)`` = 52 images per
    class by default), then the long-tailed training subset of the rest with the Cao et al. (2019)
    profile (``n_max`` = the smallest per-class pool) and shuffle selection rule, and optionally a
    balanced validation split from the left-over images (:func:`balanced_validation_split`).
    Images are uint8 ``N×1×8×8``, pixel values 0..16 scaled to 0..255; mean/std come from the
    training split. Indices point into ``load_digits()``'s order.
    """
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    num_classes = int(labels.max()) + 1
    test_idx, pool = _balanced_test_split(labels, test_fraction, seed)
    target = build_profile(profile, int(np.bincount(labels[pool]).min()), num_classes, imbalance_factor)
    selected_pos = select_long_tailed(labels[pool], target, rule="shuffle", seed=seed)
    selected = pool[selected_pos]
    train_idx, val, val_policy = selected, None, None
    if val_per_class:  # drawn within the non-test pool, then mapped back to load_digits order
        val_pos, train_pos, val_policy = split_validation(labels[pool], selected_pos, val_per_class, seed=seed)
        val_idx, train_idx = pool[val_pos], pool[train_pos]
        val_policy["val_indices_sha256"] = indices_sha256(val_idx)
        val = ArraySplit(images[val_idx], labels[val_idx], val_idx)
    train_x = images[train_idx]
    scaled = train_x.astype(np.float64) / 255.0
    return LongTailedDataset(
        name="digits-lt",
        num_classes=num_classes,
        class_names=[str(c) for c in range(num_classes)],
        train=ArraySplit(train_x, labels[train_idx], train_idx),
        test=ArraySplit(images[test_idx], labels[test_idx], test_idx),
        val=val,
        mean=(float(scaled.mean()),),
        std=(float(scaled.std()),),
        meta={
            "source": "sklearn.datasets.load_digits",
            **subset_meta(profile, imbalance_factor, target, "shuffle", seed, selected, train_idx),
            "test_fraction": float(test_fraction),
            "test_indices_sha256": indices_sha256(test_idx),
            "val_policy": val_policy,
        },
    )
