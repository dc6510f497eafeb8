"""Logit adjustment (Menon et al. 2021) and Balanced Softmax (Ren et al. 2020).

Menon, Jayasumana, Rawat, Jain, Veit, Kumar. "Long-tail learning via logit adjustment",
ICLR 2021 (arXiv 2020).
Ren, Yu, Sheng, Ma, Zhao, Yi, Li. "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
NeurIPS 2020.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .base import LOSSES, Loss, counts_tensor


def log_prior(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    r""":math:`\log\pi_c = \log(n_c / N)` as a float32 tensor [C]."""
    n = counts_tensor(class_counts).double()
    return torch.log(n / n.sum()).float()


def posthoc_logit_adjustment(
    logits: torch.Tensor, class_counts: Sequence[int] | torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    r"""Post-hoc logit adjustment (Menon et al. 2021, Eq. 9): :math:`z_c - \tau \log \pi_c`.

    Apply at test time to the logits of a model trained with plain cross-entropy; the argmax of
    the result is the balanced-error Bayes-optimal prediction for τ = 1. Returns float32 on the
    logits' device. ``class_counts`` may be a list/array (validated: all positive) or a tensor
    (used as is on the logits' device, without a host-side check, so the call stays graph-safe).
    """
    if isinstance(class_counts, torch.Tensor):
        n = class_counts.to(device=logits.device, dtype=torch.float64).flatten()
        lp = torch.log(n / n.sum()).float()
    else:
        lp = log_prior(class_counts).to(logits.device)
    return logits.float() - tau * lp


@LOSSES.register("logit_adjusted")
class LogitAdjustedLoss(Loss):
    r"""Logit-adjusted softmax cross-entropy (Menon et al. 2021, Eq. 10).

    .. math::  \ell(z, y) = -\log\frac{e^{z_y + \tau\log\pi_y}}{\sum_{j} e^{z_j + \tau\log\pi_j}},
               \qquad \pi_c = n_c / N

    τ = 1 by default (the paper's value). τ lives in the 0-dim buffer ``scale`` and can be changed
    in place with :meth:`set_scale` (``fill_``), so a schedule over epochs (e.g. GLAG's GraLoss,
    α(T) = s·(c^{T/T_max} − 1)) works inside a captured CUDA graph. τ = 0 is cross-entropy.
    """

    def __init__(self, class_counts, tau: float = 1.0):
        super().__init__()
        self.register_buffer("log_prior", log_prior(class_counts))
        self.register_buffer("scale", torch.tensor(float(tau), dtype=torch.float32))

    @torch.no_grad()
    def set_scale(self, value: float | torch.Tensor) -> None:
        """Set τ in place (``fill_``), keeping the buffer's storage (graph-safe)."""
        self.scale.fill_(value)

    def adjusted_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float() + self.scale * self.log_prior

    def per_sample(self, logits, targets):
        return F.cross_entropy(self.adjusted_logits(logits), targets.long(), reduction="none")


@LOSSES.register("balanced_softmax")
class BalancedSoftmaxLoss(Loss):
    r"""Balanced Softmax cross-entropy (Ren et al. 2020, Eq. 4).

    .. math::  \ell(z, y) = -\log\frac{n_y e^{z_y}}{\sum_j n_j e^{z_j}}
               = \mathrm{CE}(z + \log n,\ y)

    Equal to the logit-adjusted loss with τ = 1 (log n and log π differ by a constant). With equal
    class counts it is plain cross-entropy.
    """

    def __init__(self, class_counts):
        super().__init__()
        self.register_buffer("log_counts", torch.log(counts_tensor(class_counts)))

    def per_sample(self, logits, targets):
        return F.cross_entropy(logits.float() + self.log_counts, targets.long(), reduction="none")
