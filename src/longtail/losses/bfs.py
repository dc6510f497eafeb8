"""BWLM's Balanced Focal-Softmax (BFS) loss and its data-balanced review set (seed 004).

Fan, Ma, Liu, Yuan, "BWLM: A Balanced Weight Learning Mechanism for Long-Tailed Image
Recognition", Appl. Sci. 14(1):454, 2024, Sec. 3.3, Eqs. (5)-(13):

    L_CB(z, y) = - (1 - beta) / (1 - beta ** n_y) * sum_j (1 - p_j^t) ** gamma * log p_j^t   (8)
        p_j^t = sigmoid(z_j) if j == y else 1 - sigmoid(z_j)       (sigmoid focal, Lin et al.)
    L_BS(z, y) = - log( n_y exp(z_y) / sum_i n_i exp(z_i) )                                  (10)
    L_BFS = alpha * L_CB + (1 - alpha) * L_BS,      alpha = 0.1 by default (Sec. 4.3)         (11)

BWLM itself is BFS plus weight decay lambda * ||theta||^2 on the new classifier (Eq. 17); the
weight decay belongs to the optimiser (the stage's ``weight_decay``), not to this loss.

Decisions on what the paper leaves open:

- beta and gamma are not given. We use beta = 0.9999 (Cui et al.'s default, the project's CB
  default) and gamma = 2.0 (Lin et al.'s focal default; the weight-balancing code that BWLM's
  lambda follows, ref. [52], calls ``CB_loss(..., beta=0.9999, gamma=2.0)``, though with its
  softmax type, where gamma is unused). Cui et al.'s CIFAR scripts use gamma = 1.0.
- The CB weights are normalised so that sum_c w_c = C (Cui et al.'s code); Eq. (8) prints the raw
  (1-beta)/(1-beta**n_y), which with beta = 0.9999 is far below 1 (2e-3 for n = 500) and would make the CB term vanish
  next to the BS term, so alpha would no longer mean what Sec. 4.3 says.
- The CB-focal term sums over the C binary terms of a sample and is averaged over the batch
  (Cui et al.'s code: sum over classes and batch, divided by the number of positives).
  Eqs. (11)-(12) as printed drop the minus sign of Eq. (6) in front of L_FL (Eq. 7 defines
  L_FL as a sum of (negative) log terms); we follow Eqs. (6), (8) and (13), in which both terms
  are positive losses.
- Both pieces are the project's baselines, composed: ``cb_sigmoid_focal`` and
  ``balanced_softmax``.

Data-balanced review (Sec. 3.2, Eq. 2): with classes sorted by size, n_1 >= ... >= n_C, and
m = C / 2, stage 1 trains on the m head classes only; stage 2 trains on

    D^ = sum_{j=1..m} sam(D_j, n_{m+1}) + sum_{j=m+1..C} D_j,

each head class randomly subsampled (without replacement, seeded) to the size of the largest
tail class, tail classes kept whole. See :func:`review_set_indices`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .base import LOSSES, Loss, counts_tensor
from ..errors import ConfigError, DataError
from .class_balanced import CBSigmoidFocalLoss
from .logit_adjust import BalancedSoftmaxLoss


@LOSSES.register("bfs")
class BalancedFocalSoftmaxLoss(Loss):
    """BFS (BWLM Eq. 11): alpha * CB sigmoid-focal + (1 - alpha) * Balanced Softmax, per sample.

    Args:
        class_counts: the n_j of Eqs. (5) and (10). BWLM's review stage passes the counts of the
            review set D^ it trains on by default (``options.loss_counts: review``; ``full``: those
            of the whole training set D; see :mod:`longtail.methods.bwlm`).
        alpha: weight of the CB-focal term; 0.1 is the paper's default (Sec. 4.3).
        beta: CB effective-number hyper-parameter (weights normalised to sum to C).
        gamma: focal focusing parameter.
    """

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        alpha: float = 0.1,
        beta: float = 0.9999,
        gamma: float = 2.0,
    ):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
        counts_tensor(class_counts)  # validates
        self.alpha = float(alpha)
        self.cb_focal = CBSigmoidFocalLoss(class_counts, beta=beta, gamma=gamma)
        self.balanced_softmax = BalancedSoftmaxLoss(class_counts)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        cb = self.cb_focal.per_sample(logits, targets)
        bs = self.balanced_softmax.per_sample(logits, targets)
        return self.alpha * cb + (1.0 - self.alpha) * bs

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self.cb_focal.on_epoch_start(epoch, total_epochs)
        self.balanced_softmax.on_epoch_start(epoch, total_epochs)

    def on_epoch_end(self) -> None:
        self.cb_focal.on_epoch_end()
        self.balanced_softmax.on_epoch_end()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def _ranked_classes(class_counts: np.ndarray) -> np.ndarray:
    """Class ids from largest to smallest; ties keep label order (stable)."""
    return np.argsort(-class_counts, kind="stable")


def _head_count(num_classes: int, num_head_classes: int | None) -> int:
    m = num_classes // 2 if num_head_classes is None else int(num_head_classes)
    if not 1 <= m < num_classes:
        raise ConfigError(
            f"num_head_classes must be in [1, {num_classes - 1}] for {num_classes} classes, got {m}"
        )
    return m


def bwlm_head_classes(class_counts: Sequence[int], num_head_classes: int | None = None) -> np.ndarray:
    """BWLM's head classes: the m = C // 2 largest classes (ids, largest first).

    Stage 1 ("weights transfer") trains on these classes only (D_stage1 = sum_{j<=m} D_j).
    For odd C, m = floor(C / 2). Ties in size are broken by class id.
    """
    counts = np.asarray(class_counts, dtype=np.int64).ravel()
    m = _head_count(counts.size, num_head_classes)
    return _ranked_classes(counts)[:m].astype(np.int64)


def review_set_indices(
    labels: Sequence[int] | np.ndarray,
    class_counts: Sequence[int] | np.ndarray,
    num_head_classes: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices (into ``labels``, sorted) of BWLM's data-balanced review set (Eq. 2).

    Classes are ranked by ``class_counts`` (largest first, ties by class id); the first
    m = C // 2 (or ``num_head_classes``) are head classes, each subsampled without replacement
    to n_{m+1}, the size of the largest remaining class; the other classes are kept whole.
    A head class that already has <= n_{m+1} images (a tie) is kept whole. ``seed`` seeds a
    ``numpy.random.default_rng`` used for the head-class draws, in rank order.

    ``class_counts`` must equal ``bincount(labels, minlength=C)``.
    """
    labels = np.asarray(labels).ravel()
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    counts = np.asarray(class_counts, dtype=np.int64).ravel()
    num_classes = counts.size
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels must lie in [0, {num_classes - 1}] for {num_classes} class counts, "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    actual = np.bincount(labels, minlength=num_classes)
    if not np.array_equal(actual, counts):
        raise DataError(
            "class_counts do not match the labels: pass the counts of this same split "
            f"(bincount(labels) = {actual.tolist()[:20]}, class_counts = {counts.tolist()[:20]})"
        )
    m = _head_count(num_classes, num_head_classes)
    order = _ranked_classes(counts)
    cap = int(counts[order[m]])
    rng = np.random.default_rng(seed)
    keep = []
    for rank, c in enumerate(order):
        idx = np.flatnonzero(labels == c)
        if rank < m and idx.size > cap:
            idx = rng.choice(idx, size=cap, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep)).astype(np.int64)


__all__ = ["BalancedFocalSoftmaxLoss", "review_set_indices", "bwlm_head_classes"]
