"""A balanced validation split drawn from the training images a long-tailed subset left out.

The test set must never select checkpoints or tune settings (GLAG adapts β from validation
accuracy, for instance). For CIFAR-LT the training images that the long-tailed selection did not
keep are a natural balanced validation pool: every class except the largest has images left over.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError


def _class_pools(labels: np.ndarray, selected: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Class ``c``'s selected indices (selection order) and left-over indices (source order)."""
    sel_c = selected[labels[selected] == c]
    all_c = np.flatnonzero(labels == c)
    return sel_c, np.setdiff1d(all_c, sel_c)


def _check(labels: np.ndarray, selected: np.ndarray, per_class: int) -> None:
    if labels.ndim != 1 or labels.size == 0:
        raise DataError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if int(per_class) < 1:
        raise DataError(f"per_class must be a positive number of validation images, got {per_class}")
    if selected.size and (selected.min() < 0 or selected.max() >= labels.size):
        raise DataError(
            f"selected indices span [{selected.min()}, {selected.max()}] but there are only "
            f"{labels.size} labels; pass indices into the same split as the labels"
        )


def validation_shortfall(labels, selected_indices, per_class: int) -> np.ndarray:
    """Per class, how many validation images must be borrowed from the long-tailed selection:
    ``max(0, per_class - left_over_c)`` where ``left_over_c`` counts the class's images not selected."""
    labels = np.asarray(labels, dtype=np.int64)
    selected = np.asarray(selected_indices, dtype=np.int64)
    _check(labels, selected, per_class)
    num_classes = int(labels.max()) + 1
    total = np.bincount(labels, minlength=num_classes)
    kept = np.bincount(labels[np.unique(selected)], minlength=num_classes)
    return np.maximum(0, per_class - (total - kept))


def balanced_validation_split(
    labels, selected_indices, per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Take ``per_class`` validation images of every class from the images left out of the
    long-tailed selection; return ``(val_indices, train_indices)``.

    Rule, per class in label order with one ``np.random.RandomState(seed)``: draw the class's
    left-over images without replacement (a seeded permutation). If fewer than ``per_class``
    are left over (CIFAR-LT class 0 keeps all its images), the shortfall is taken from the END of
    that class's long-tailed selection — the images the shuffle rule ranks last, so subsets stay
    nested across imbalance factors — and removed from training (every occurrence, should the
    selection hold duplicates). The training set of a borrowing class therefore shrinks by the
    shortfall; :func:`validation_shortfall` says by how much, per class.
    Validation and training indices are disjoint; training keeps the selection's order.
    """
    labels = np.asarray(labels, dtype=np.int64)
    selected = np.asarray(selected_indices, dtype=np.int64)
    _check(labels, selected, per_class)
    rng = np.random.RandomState(seed)
    val_parts, borrowed_parts = [], []
    for c in range(int(labels.max()) + 1):
        sel_c, left_c = _class_pools(labels, selected, c)
        if left_c.size >= per_class:
            val_parts.append(rng.permutation(left_c)[:per_class])
            continue
        distinct = sel_c[np.sort(np.unique(sel_c, return_index=True)[1])]
        short = per_class - left_c.size
        if short >= distinct.size:
            raise DataError(
                f"class {c} has {left_c.size + distinct.size} training images, too few for {per_class} "
                f"validation images plus at least one training image; lower val_per_class"
            )
        borrowed = distinct[distinct.size - short :]
        val_parts.append(np.concatenate([rng.permutation(left_c), borrowed]))
        borrowed_parts.append(borrowed)
    val = np.concatenate(val_parts).astype(np.int64)
    train = selected[~np.isin(selected, np.concatenate(borrowed_parts))] if borrowed_parts else selected.copy()
    return val, train.astype(np.int64)


def split_validation(labels, selected_indices, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`balanced_validation_split` plus the record a builder stores as ``meta["val_policy"]``
    (per_class, seed, source, and ``borrowed_per_class`` from :func:`validation_shortfall`)."""
    val, train = balanced_validation_split(labels, selected_indices, per_class, seed=seed)
    policy = {
        "per_class": int(per_class),
        "seed": int(seed),
        "source": "training images left out of the long-tailed subset",
        "borrowed_per_class": validation_shortfall(labels, selected_indices, per_class).tolist(),
    }
    return val, train, policy
