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


WEIGHT_FORMS = ("outside", "ldam_code")


@LOSSES.register("focal")
class FocalLoss(Loss):
    r"""Softmax focal loss (Lin et al. 2017, multi-class form), optionally with per-class weights.

    .. math::  \ell(z, y) = -\alpha_y (1 - p_y)^{\gamma} \log p_y, \qquad p = \mathrm{softmax}(z)

    ``gamma`` = 2.0 is Lin et al.'s recommended value; γ = 0 is cross-entropy. ``alpha`` is an
    optional per-class weight vector (length C; default ``None``: no weighting). Reduction: mean
    over the batch.

    Where the per-class weight goes (``weight_form``):

    - ``"outside"`` (default): the formula above, Lin et al.'s α-balanced focal loss (their Eq. 5):
      the weight multiplies the focal term, whose modulating factor uses the softmax p_y.
    - ``"ldam_code"``: the ``FocalLoss`` of the LDAM-DRW code (Cao et al. 2019, ``losses.py``),
      ``focal_loss(F.cross_entropy(z, y, weight=w, reduction="none"), gamma)``: with the weighted
      cross-entropy :math:`c = \alpha_y \cdot(-\log p_y)`, :math:`\ell = (1 - e^{-c})^{\gamma}\, c`,
      averaged over the batch (``loss.mean()``). The modulating factor then sees the *weighted* CE,
      so :math:`e^{-c} = p_y^{\alpha_y}` is not p_y when :math:`\alpha_y \neq 1`.

    Without weights (``alpha`` None, or all ones) the two forms are the same loss, and this is the
    LDAM-DRW code's ``FocalLoss`` exactly. With weights they differ; DRW with this base
    (``loss: {name: drw, base: focal}``) passes its deferred weights in the same form
    (:meth:`class_weighted_per_sample`), and normalises by the batch's summed weights by
    default; the LDAM-DRW code's Focal + DRW (``--loss_type Focal --train_rule DRW``) is
    ``{name: drw, base: focal, gamma: 1.0, weight_form: ldam_code, normalize: batch}`` (their
    script's γ = 1; their Focal divides by B, not by the summed weights).
    The "Focal" CIFAR-LT figures that seeds 000, 001, 003 and 004 copy (e.g. 38.41 on
    CIFAR-100-LT IF 100) are Cui et al.'s (2019), measured with the one-vs-all sigmoid form
    (:class:`SigmoidFocalLoss`, also the one CB-focal and BWLM use).
    """

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None, weight_form: str = "outside"):
        super().__init__()
        self.gamma = check_range("gamma", gamma, 0.0, float("inf"))
        if weight_form not in WEIGHT_FORMS:
            raise ConfigError(
                f"focal weight_form must be 'outside' (alpha_y times the focal term, Lin et al.) or 'ldam_code' "
                f"((1 - exp(-alpha_y CE))^gamma alpha_y CE, the LDAM-DRW code), got {weight_form!r}"
            )
        self.weight_form = weight_form
        if alpha is None:
            self.alpha = None
        else:
            a = torch.as_tensor(alpha, dtype=torch.float32).flatten()
            if a.numel() == 0 or bool((a < 0).any()):
                raise ConfigError("focal alpha must be a non-empty list of non-negative per-class weights")
            self.register_buffer("alpha", a)

    def class_weighted_per_sample(self, logits: torch.Tensor, targets: torch.Tensor,
                                  weights: torch.Tensor | None) -> torch.Tensor:
        """Per-sample loss with per-class ``weights`` [C] (times ``alpha`` if set) in ``weight_form``."""
        if self.alpha is not None:
            weights = self.alpha if weights is None else weights * self.alpha
        if weights is None:
            return softmax_focal_per_sample(logits, targets, self.gamma)
        w = weights[targets]
        if self.weight_form == "outside":
            return w * softmax_focal_per_sample(logits, targets, self.gamma)
        ce = w * F.cross_entropy(logits.float(), targets, reduction="none")
        return ce if self.gamma == 0.0 else (-torch.expm1(-ce)).pow(self.gamma) * ce

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.class_weighted_per_sample(logits, targets, None)

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, alpha={'per-class' if self.alpha is not None else None}, "
                f"weight_form={self.weight_form!r}")


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
