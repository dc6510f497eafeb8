"""Focal loss (Lin et al. 2017), softmax and one-vs-all sigmoid forms.

Lin, Goyal, Girshick, He, Dollár. "Focal Loss for Dense Object Detection", ICCV 2017.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import LOSSES, Loss
from .ce import check_range, gather_target, one_hot


def softmax_focal_per_sample(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    r"""``-(1 - p_y)^γ log p_y`` per sample, float32.

    ``log(1 - p_y)`` is computed as ``logsumexp_{j≠y} z_j - logsumexp_j z_j`` so that the
    modulating factor and its gradient stay finite when ``p_y`` rounds to 1 (any γ > 0).
    """
    z = logits.float()
    lse = torch.logsumexp(z, dim=1)
    log_p_y = gather_target(z, targets) - lse
    if gamma == 0.0:
        return -log_p_y
    is_target = one_hot(targets, z.shape[1], dtype=torch.bool)
    log_1m_p_y = torch.logsumexp(z.masked_fill(is_target, float("-inf")), dim=1) - lse
    return -torch.exp(gamma * log_1m_p_y) * log_p_y


def sigmoid_focal_elementwise(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha: float | None = None
) -> torch.Tensor:
    r"""One-vs-all sigmoid focal terms ``[B, C]`` against one-hot targets, float32.

    With :math:`z^t_j = z_j` for the true class and :math:`-z_j` otherwise and
    :math:`p^t_j = \sigma(z^t_j)`: :math:`-\alpha^t_j (1 - p^t_j)^\gamma \log p^t_j`, written as
    ``-exp(γ·logσ(-z^t)) · logσ(z^t)`` (stable for large |z|). ``alpha`` (Lin et al.'s α-balancing)
    weighs positives by α and negatives by 1 − α; ``None`` means no α factor.
    """
    z = logits.float()
    pos = one_hot(targets, z.shape[1], dtype=torch.bool)
    zt = torch.where(pos, z, -z)
    loss = -F.logsigmoid(zt)
    if gamma != 0.0:
        loss = torch.exp(gamma * F.logsigmoid(-zt)) * loss
    if alpha is not None:
        loss = loss * torch.where(pos, alpha, 1.0 - alpha)
    return loss


@LOSSES.register("focal")
class FocalLoss(Loss):
    r"""Softmax focal loss (Lin et al. 2017, multi-class form).

    .. math::  \ell(z, y) = -\alpha_y (1 - p_y)^{\gamma} \log p_y, \qquad p = \mathrm{softmax}(z)

    ``gamma`` = 2.0 is Lin et al.'s recommended value; γ = 0 is cross-entropy. ``alpha`` is an
    optional per-class weight vector (length C; default ``None``: no weighting). This is the
    form of the LDAM-DRW code's ``FocalLoss`` (Cao et al. 2019), which most CIFAR-LT code re-uses.
    The "Focal" CIFAR-LT figures that seeds 000, 001, 003 and 004 copy (e.g. 38.41 on
    CIFAR-100-LT IF 100) are Cui et al.'s (2019), measured with the one-vs-all sigmoid form
    (:class:`SigmoidFocalLoss`, also the one CB-focal and BWLM use).
    """

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None):
        super().__init__()
        self.gamma = check_range("gamma", gamma, 0.0, float("inf"))
        if alpha is None:
            self.alpha = None
        else:
            a = torch.as_tensor(alpha, dtype=torch.float32).flatten()
            if a.numel() == 0 or bool((a < 0).any()):
                raise ConfigError("focal alpha must be a non-empty list of non-negative per-class weights")
            self.register_buffer("alpha", a)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = softmax_focal_per_sample(logits, targets, self.gamma)
        if self.alpha is not None:
            loss = loss * self.alpha[targets]
        return loss

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={'per-class' if self.alpha is not None else None}"


@LOSSES.register("sigmoid_focal")
class SigmoidFocalLoss(Loss):
    r"""One-vs-all sigmoid focal loss with one-hot targets (Lin et al. 2017).

    .. math::  \ell(z, y) = \sum_{j=1}^{C} -\alpha^t_j (1 - p^t_j)^{\gamma} \log p^t_j,\quad
               p^t_j = \sigma(z_j) \text{ if } j = y \text{ else } 1 - \sigma(z_j)

    Reduction: **sum over the C classes, mean over the batch** (Lin et al. normalise the summed
    loss by the number of positives, which is B for one-hot labels; Cui et al.'s CB code does the
    same). ``gamma`` = 2.0 (Lin et al.); ``alpha`` = ``None`` (no α-balancing) by default, Lin et
    al. used α = 0.25 for detection.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None):
        super().__init__()
        self.gamma = check_range("gamma", gamma, 0.0, float("inf"))
        self.alpha = None if alpha is None else check_range("alpha", alpha, 0.0, 1.0)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_elementwise(logits, targets, self.gamma, self.alpha).sum(dim=1)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"
