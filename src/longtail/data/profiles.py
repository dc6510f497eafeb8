"""Class-count profiles: how many training images each class keeps.

Class 0 is the largest class. The exponential profile is the one of Cao et al. (2019,
"Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss") that every
CIFAR-10/100-LT number in the literature uses; the step profile is the other profile of the
same paper; an explicit list covers anything else.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DataError

PROFILE_KINDS = ("exp", "step", "explicit")


def _check(n_max: int, num_classes: int, imbalance_factor: float) -> None:
    if int(n_max) < 1:
        raise DataError(f"n_max must be a positive image count, got {n_max}")
    if int(num_classes) < 2:
        raise DataError(f"a long-tailed profile needs at least 2 classes, got num_classes={num_classes}")
    if not imbalance_factor >= 1:
        raise DataError(
            f"imbalance_factor is n_max / n_min and must be >= 1, got {imbalance_factor}; "
            "use 1 for a balanced set"
        )


def exponential_profile(n_max: int, num_classes: int, imbalance_factor: float) -> np.ndarray:
    """Exponential profile of Cao et al. (2019): ``n_c = int(n_max * (1/IF)**(c/(C-1)))``.

    ``int`` truncates, exactly as the reference generator does, so CIFAR-10 at IF 100 gives
    5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50.
    """
    _check(n_max, num_classes, imbalance_factor)
    return np.array(
        [int(n_max * (1.0 / imbalance_factor) ** (c / (num_classes - 1.0))) for c in range(num_classes)],
        dtype=np.int64,
    )


def step_profile(
    n_max: int, num_classes: int, imbalance_factor: float, head_fraction: float = 0.5
) -> np.ndarray:
    """Step profile of Cao et al. (2019): the first ``int(C * head_fraction)`` classes keep
    ``n_max`` images, the rest ``int(n_max * (1/IF))`` (written as the reference code writes it,
    so that float rounding truncates the same way)."""
    _check(n_max, num_classes, imbalance_factor)
    if not 0 < head_fraction < 1:
        raise DataError(f"head_fraction must lie strictly between 0 and 1, got {head_fraction}")
    counts = np.full(num_classes, int(n_max * (1.0 / imbalance_factor)), dtype=np.int64)
    counts[: int(num_classes * head_fraction)] = n_max
    return counts


def explicit_profile(counts: Sequence[int]) -> np.ndarray:
    """A profile given as one positive integer count per class, used as is."""
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.size < 2:
        raise DataError(f"explicit counts must be a flat list with one count per class (>= 2), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) and np.all(np.mod(arr, 1) == 0)):
        raise DataError(f"explicit counts must be whole numbers, got {arr.tolist()[:10]}")
    if np.any(arr < 1):
        raise DataError(
            f"explicit counts must all be >= 1; classes {np.flatnonzero(arr < 1).tolist()[:10]} are not"
        )
    return arr.astype(np.int64)


def build_profile(
    kind: str,
    n_max: int,
    num_classes: int,
    imbalance_factor: float,
    counts: Sequence[int] | None = None,
) -> np.ndarray:
    """Build a profile by name: ``"exp"``, ``"step"`` or ``"explicit"`` (which needs ``counts``)."""
    if kind == "exp":
        return exponential_profile(n_max, num_classes, imbalance_factor)
    if kind == "step":
        return step_profile(n_max, num_classes, imbalance_factor)
    if kind == "explicit":
        if counts is None:
            raise DataError('profile "explicit" needs counts=[n_0, n_1, ...], one per class')
        out = explicit_profile(counts)
        if out.size != num_classes:
            raise DataError(f"explicit counts list has {out.size} entries but the dataset has {num_classes} classes")
        return out
    raise DataError(f"unknown profile kind {kind!r}; valid kinds: {', '.join(PROFILE_KINDS)}")
