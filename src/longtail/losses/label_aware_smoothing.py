"""Label-aware smoothing (Zhong et al. 2021, MiSLAS).

Zhong, Cui, Liu, Jia. "Improving Calibration for Long-Tailed Recognition", CVPR 2021.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import LOSSES, Loss, counts_tensor
from .ce import check_range, gather_target

SHAPES = ("concave", "linear", "convex", "exp")


def label_aware_smoothing_factors(
    class_counts, smooth_head: float = 0.4, smooth_tail: float = 0.1, shape: str = "concave",
    power: float | None = None,
) -> torch.Tensor:
    r"""Per-class smoothing ε_c (float32 [C]), MiSLAS Eq. 5, exactly as the authors' code.

    With :math:`x_c = (n_c - n_K)/(n_1 - n_K)` (n_1 the largest, n_K the smallest count) and
    ε_1 = ``smooth_head``, ε_K = ``smooth_tail``:

    * concave: :math:`\varepsilon_K + (\varepsilon_1-\varepsilon_K)\sin(\pi x/2)`
    * linear:  :math:`\varepsilon_K + (\varepsilon_1-\varepsilon_K)\,x`
    * convex:  :math:`\varepsilon_1 + (\varepsilon_1-\varepsilon_K)\sin(3\pi/2 + \pi x/2)`
    * exp:     :math:`\varepsilon_K + (\varepsilon_1-\varepsilon_K)\,x^{\text{power}}` (needs ``power``)

    If all classes have the same count (x undefined in the paper's code: 0/0) every class gets
    ε_1 = ``smooth_head`` (x = 1).
    """
    if shape not in SHAPES:
        raise ConfigError(f"shape={shape!r} is not valid; use one of {SHAPES}")
    if shape == "exp" and power is None:
        raise ConfigError("shape='exp' needs a power (e.g. power=2.0)")
    head = check_range("smooth_head", smooth_head, 0.0, 1.0, high_open=True)
    tail = check_range("smooth_tail", smooth_tail, 0.0, 1.0, high_open=True)
    n = counts_tensor(class_counts).double()
    n1, nk = n.max(), n.min()
    x = (n - nk) / (n1 - nk) if bool(n1 > nk) else torch.ones_like(n)
    if shape == "concave":
        eps = tail + (head - tail) * torch.sin(x * math.pi / 2)
    elif shape == "linear":
        eps = tail + (head - tail) * x
    elif shape == "convex":
        eps = head + (head - tail) * torch.sin(1.5 * math.pi + x * math.pi / 2)
    else:
        eps = tail + (head - tail) * torch.pow(x, float(power))
    return eps.float()


@LOSSES.register("label_aware_smoothing")
class LabelAwareSmoothingLoss(Loss):
    r"""Cross-entropy with a per-class label-smoothing factor ε_y (MiSLAS).

    .. math::  \ell(z, y) = -(1-\varepsilon_y)\log p_y - \frac{\varepsilon_y}{C}\sum_{j=1}^{C}\log p_j

    i.e. soft target :math:`q_j = (1-\varepsilon_y)\,\mathbb{1}[j=y] + \varepsilon_y / C`: the
    smoothing mass is spread uniformly over **all C classes, the true class included**, as in the
    authors' code (``confidence * nll + smoothing * (-logprobs.mean(-1))``); the paper's text
    writes ε_y/(K−1) on the other classes, the code does not. ε_y from
    :func:`label_aware_smoothing_factors`: large for head classes, small for tail classes.

    Defaults ε_1 = 0.4 (head), ε_K = 0.1 (tail), shape "concave": MiSLAS's CIFAR-100-LT setting
    (their configs vary by data set, e.g. 0.3 / 0.0 on CIFAR-10-LT). MiSLAS uses it in stage 2
    (classifier re-training, with mixup in stage 1 and label-aware BN shifting).
    """

    def __init__(self, class_counts, smooth_head: float = 0.4, smooth_tail: float = 0.1,
                 shape: str = "concave", power: float | None = None):
        super().__init__()
        self.shape = shape
        self.power = power
        self.register_buffer(
            "smoothing", label_aware_smoothing_factors(class_counts, smooth_head, smooth_tail, shape, power)
        )

    def per_sample(self, logits, targets):
        logp = F.log_softmax(logits.float(), dim=1)
        eps = self.smoothing[targets]
        return (1.0 - eps) * (-gather_target(logp, targets)) + eps * (-logp.mean(dim=1))

    def extra_repr(self) -> str:
        return f"shape={self.shape!r}, power={self.power}"
