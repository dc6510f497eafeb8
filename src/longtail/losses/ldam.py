"""LDAM loss (Cao et al. 2019).

Cao, Wei, Gaidon, Arechiga, Ma. "Learning Imbalanced Datasets with Label-Distribution-Aware
Margin Loss", NeurIPS 2019.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LOSSES, Loss, counts_tensor
from .ce import check_range, one_hot


def ldam_margins(class_counts, max_m: float = 0.5) -> torch.Tensor:
    r"""Margins :math:`\Delta_c = C / n_c^{1/4}` with C chosen so that :math:`\max_c \Delta_c` = ``max_m``."""
    m = counts_tensor(class_counts).double().pow(-0.25)
    return (m * (max_m / m.max())).float()


@LOSSES.register("ldam")
class LDAMLoss(Loss):
    r"""Label-distribution-aware margin loss.

    .. math::  \mathcal{L}_{LDAM}(z, y) = -\log\frac{e^{s(z_y-\Delta_y)}}
               {e^{s(z_y-\Delta_y)} + \sum_{j\ne y} e^{s z_j}},\qquad
               \Delta_c = \frac{K}{n_c^{1/4}},\ \max_c\Delta_c = \text{max\_m}

    Defaults follow Cao et al.'s code: ``max_m`` = 0.5, ``s`` = 30. The logits are expected to come
    from a cosine (normalised) head, :math:`z_j = \cos\theta_j \in [-1, 1]` (the ``NormedLinear``
    of the paper's code; ``CosineHead`` with scale 1 here) — the scale ``s`` is applied here, so
    the head must not scale again. For the paper's LDAM-DRW use the ``drw`` wrapper
    (:class:`longtail.losses.reweighting.DeferredReweighting`, ``base="ldam"``).
    """

    requires_head = "cosine"  # s scales normalised-cosine logits in [-1, 1] (Cao et al.)

    def __init__(self, class_counts, max_m: float = 0.5, s: float = 30.0):
        super().__init__()
        self.max_m = check_range("max_m", max_m, 0.0, float("inf"))
        self.s = check_range("s", s, 0.0, float("inf"))
        self.register_buffer("margins", ldam_margins(class_counts, self.max_m))

    def per_sample(self, logits, targets):
        z = logits.float()
        z = z - self.margins[targets].unsqueeze(1) * one_hot(targets, z.shape[1])
        return F.cross_entropy(self.s * z, targets.long(), reduction="none")

    def extra_repr(self) -> str:
        return f"max_m={self.max_m}, s={self.s}"
