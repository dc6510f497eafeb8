r"""Class-balanced losses from the effective number of samples (Cui et al. 2019).

Cui, Jia, Lin, Song, Belongie. "Class-Balanced Loss Based on Effective Number of Samples",
CVPR 2019.

Effective number :math:`E_{n} = (1-\beta^{n})/(1-\beta)`; class weight
:math:`w_c = (1-\beta)/(1-\beta^{n_c})`, normalised so that :math:`\sum_c w_c = C`.
β = 0.9999 is the default (the value the CIFAR-LT literature and the seed papers use;
β = 0 gives all weights 1, β = 1 inverse class frequency).

Four losses share the weights; they differ in the base loss and in the reduction, and the
differences matter for reproducing numbers:

* ``cb_ce``            weighted softmax cross-entropy — the paper's definition ("CB softmax").
* ``cb_focal``         weighted softmax focal loss.
* ``cb_sigmoid_focal`` weighted one-vs-all sigmoid focal loss, Cui et al.'s "CB focal" as in
  their code and in BWLM (seed 004, Eq. 6-8): every one of the C sigmoid terms of a sample is
  multiplied by that sample's w_y, summed over classes, averaged over the batch.
* ``cb_softmax_bce``   binary cross-entropy on softmax probabilities against one-hot labels,
  weighted by w_y: the ``loss_type="softmax"`` branch of the widely copied PyTorch port of the CB
  loss, which the weight-balancing code (Alshammari et al. 2022) and IWB (seed 000) build on.
  Not the paper's definition; kept under its own name.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import LOSSES, Loss, counts_tensor
from .ce import check_range, gather_target, one_hot
from .focal import sigmoid_focal_elementwise, softmax_focal_per_sample

NORMALIZE_CHOICES = ("batch", "weights")


def class_balanced_weights(class_counts: Sequence[int] | torch.Tensor, beta: float = 0.9999) -> torch.Tensor:
    r"""Per-class weights :math:`w_c = (1-\beta)/(1-\beta^{n_c})`, normalised to sum to C (float32).

    Computed in float64 (β^n for β close to 1 loses digits in float32). β = 0 gives all ones;
    β = 1 is the limit :math:`w_c \propto 1/n_c` (plain inverse-frequency weighting, the "Class
    Balanced" row of GHM-CWAP's Table 1, beside its "Effective Number" row).
    """
    beta = check_range("beta", beta, 0.0, 1.0)
    n = counts_tensor(class_counts).double()
    if beta == 1.0:
        w = 1.0 / n
    else:
        w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    w = w / w.sum() * n.numel()
    return w.float()


def weighted_mean(
    losses: torch.Tensor,
    weights: torch.Tensor,
    sample_weight: torch.Tensor | None,
    normalize: str,
) -> torch.Tensor:
    """Reduce per-sample ``losses`` already multiplied by the class weights ``weights`` ([B]).

    ``normalize="batch"``: divide by B (Cui et al.). ``"weights"``: divide by Σ weights, as
    :func:`torch.nn.functional.cross_entropy` does with ``weight=`` and ``reduction="mean"``
    (Cao et al.'s LDAM-DRW code).
    """
    if sample_weight is not None:
        losses = losses * sample_weight
    if normalize == "weights":
        return losses.sum() / weights.sum()
    return losses.mean()


def check_normalize(normalize: str) -> str:
    if normalize not in NORMALIZE_CHOICES:
        raise ConfigError(f"normalize={normalize!r} is not valid; use one of {NORMALIZE_CHOICES}")
    return normalize


class _ClassBalanced(Loss):
    """Shared constructor: the CB weights as buffer ``class_weights`` [C]."""

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, beta: float = 0.9999):
        super().__init__()
        self.beta = float(beta)
        self.register_buffer("class_weights", class_balanced_weights(class_counts, beta))

    def extra_repr(self) -> str:
        return f"beta={self.beta}, num_classes={self.class_weights.numel()}"


@LOSSES.register("cb_ce")
class CBCrossEntropyLoss(_ClassBalanced):
    r"""Class-balanced softmax cross-entropy (Cui et al. 2019, Eq. for "CB softmax").

    .. math::  \mathcal{L} = \frac{1}{B}\sum_{i} w_{y_i}\,\big(-\log \mathrm{softmax}(z_i)_{y_i}\big),
               \quad w_c = \frac{1-\beta}{1-\beta^{n_c}},\ \sum_c w_c = C

    ``normalize="batch"`` (default) divides by B as in Cui et al.; ``normalize="weights"`` divides
    by :math:`\sum_i w_{y_i}`, i.e. ``F.cross_entropy(z, y, weight=w)``, the form many
    decoupling/cRT codes use. :meth:`per_sample` is always :math:`w_y \cdot CE`.
    """

    def __init__(self, class_counts, beta: float = 0.9999, normalize: str = "batch"):
        super().__init__(class_counts, beta)
        self.normalize = check_normalize(normalize)

    def per_sample(self, logits, targets):
        ce = F.cross_entropy(logits.float(), targets.long(), reduction="none")
        return self.class_weights[targets] * ce

    def forward(self, logits, targets, sample_weight=None):
        return weighted_mean(
            self.per_sample(logits, targets), self.class_weights[targets], sample_weight, self.normalize
        )


@LOSSES.register("cb_focal")
class CBFocalLoss(_ClassBalanced):
    r"""Class-balanced softmax focal loss: :math:`w_y \cdot (-(1-p_y)^\gamma \log p_y)`, mean over batch.

    γ = 2.0 by default (Lin et al.); Cui et al. tune γ per data set over {0.5, 1.0, 2.0}.
    """

    def __init__(self, class_counts, beta: float = 0.9999, gamma: float = 2.0):
        super().__init__(class_counts, beta)
        self.gamma = check_range("gamma", gamma, 0.0, float("inf"))

    def per_sample(self, logits, targets):
        return self.class_weights[targets] * softmax_focal_per_sample(logits, targets, self.gamma)


@LOSSES.register("cb_sigmoid_focal")
class CBSigmoidFocalLoss(_ClassBalanced):
    r"""Class-balanced sigmoid focal loss (Cui et al. 2019; BWLM seed 004, Eq. 8).

    .. math::  \mathcal{L}_{CB}(z, y) = -\frac{1-\beta}{1-\beta^{n_y}}
               \sum_{j=1}^{C} (1-p^t_j)^{\gamma}\log p^t_j,\quad
               p^t_j = \sigma(z^t_j),\ z^t_j = z_j \text{ if } j=y \text{ else } -z_j

    As in Cui et al.'s released code: the sample weight w_y multiplies all C one-vs-all terms
    of the sample (their ``alpha`` tensor is w_y broadcast over classes), the terms are summed over
    classes and the total is divided by the number of positive labels, i.e. B for one-hot labels
    (sum over classes, mean over batch). No α-balancing beyond w_y. γ = 2.0 by default (Lin et
    al.); the CB paper tunes γ per data set over {0.5, 1.0, 2.0}; BWLM does not state its γ.
    """

    def __init__(self, class_counts, beta: float = 0.9999, gamma: float = 2.0):
        super().__init__(class_counts, beta)
        self.gamma = check_range("gamma", gamma, 0.0, float("inf"))

    def per_sample(self, logits, targets):
        terms = sigmoid_focal_elementwise(logits, targets, self.gamma)
        return self.class_weights[targets] * terms.sum(dim=1)


@LOSSES.register("cb_softmax_bce")
class CBSoftmaxBCELoss(_ClassBalanced):
    r"""Binary cross-entropy on softmax probabilities, weighted by the CB weight of the label.

    .. math::  \mathcal{L} = \frac{1}{BC}\sum_{i}\sum_{j=1}^{C} w_{y_i}\,
               \mathrm{BCE}\big(\mathrm{softmax}(z_i)_j,\ \mathbb{1}[j = y_i]\big)

    This is ``F.binary_cross_entropy(softmax(z), one_hot(y), weight=w_y broadcast)`` with the
    default ``reduction="mean"`` (mean over all B·C entries): the ``loss_type="softmax"`` branch of
    the PyTorch CB-loss port used by the weight-balancing code (Alshammari et al. 2022) that IWB
    (seed 000) builds on. So that :meth:`forward` (mean over the batch) matches it,
    :meth:`per_sample` is :math:`w_y \cdot \frac{1}{C}\sum_j \mathrm{BCE}_j`. Log terms are clamped
    at −100 exactly as PyTorch's BCE does. Not Cui et al.'s definition: that is ``cb_ce``.
    """

    def per_sample(self, logits, targets):
        z = logits.float()
        probs = torch.softmax(z, dim=1)
        target = one_hot(targets, z.shape[1])
        # binary_cross_entropy refuses to run under autocast; it is computed in float32 anyway.
        with torch.autocast(device_type=z.device.type, enabled=False):
            bce = F.binary_cross_entropy(probs, target, reduction="none")
        return self.class_weights[targets] * bce.mean(dim=1)


__all__ = [
    "class_balanced_weights",
    "weighted_mean",
    "CBCrossEntropyLoss",
    "CBFocalLoss",
    "CBSigmoidFocalLoss",
    "CBSoftmaxBCELoss",
    "gather_target",
]
