"""GHM-C: gradient harmonizing classification loss (Li et al. 2019), softmax form.

Li, Liu, Wang. "Gradient Harmonized Single-stage Detector", AAAI 2019.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import LOSSES, Loss
from .ce import check_range, gather_target, one_hot


@LOSSES.register("ghm_c")
class GHMCLoss(Loss):
    r"""GHM-C loss: weigh each gradient term by the inverse density of its gradient norm.

    .. math::  \mathcal{L} = \frac{1}{B}\sum_{i=1}^{B} \beta_i\,\mathrm{CE}(z_i, y_i),\qquad
               \beta_i = \frac{B}{GD(g_i)},\qquad g_i = 1 - p_{i,y_i}

    g is the norm of the gradient of CE with respect to the true-class logit (detached).
    Unit-region approximation: [0, 1] is cut into ``bins`` (30) equal-width regions; the density
    of region r is its (momentum-averaged) count times the number of non-empty regions n, so
    :math:`\beta_i = B / (n \cdot R_{r(i)})` with :math:`R_r \leftarrow \mu R_r + (1-\mu)\,c_r`
    for every region with :math:`c_r > 0` samples in the batch (μ = ``momentum`` = 0.75; 30 bins
    and 0.75 are the values of Li et al. and of their mmdetection config); empty regions keep
    their R and give no weight. With μ = 0 the weights of a batch sum to B (mean weight 1). The
    gradient with respect to the logits is :math:`\beta_i (p_i - e_{y_i})` with β constant.

    ``form="softmax"`` (default) is the softmax adaptation above: mmdetection's ``GHMC`` (the
    authors' code) with its sigmoid g = |σ(z) − y| replaced by the softmax g = 1 − p_y, the
    difficulty measure GHM-CWAP (seed 002) builds on. ``form="sigmoid"`` is GHM-C as published and
    as in mmdetection (``use_sigmoid=True``): C one-vs-all binary terms per sample, each its own
    g = |σ(z_j) − 1[j = y]| in one histogram of all B·C terms, weighted BCE summed and divided by
    B·C (mmdetection's ``avg_factor``). Seed 002 does not say which form its "GHM [24]" row of
    Table 1 used; its remark that "the original form of GHM is not suitable for the multi-class
    classification task" suggests the sigmoid one.

    One difference from mmdetection, documented: it starts R at 0, so a region's first update
    gives R = (1−μ)·c and inflates its weight by 1/(1−μ); here by default (``ema_init="first"``)
    a region's first non-empty batch sets R = c. ``ema_init="zero"`` reproduces mmdetection. The
    histogram ``acc_sum`` [bins] and the flags ``seen`` [bins] are buffers updated in place, in
    training mode only, without host synchronisation.
    """

    def __init__(self, bins: int = 30, momentum: float = 0.75, ema_init: str = "first",
                 form: str = "softmax"):
        super().__init__()
        if int(bins) != bins or bins < 1:
            raise ConfigError(f"bins={bins} must be a positive integer (the paper uses 30)")
        if ema_init not in ("first", "zero"):
            raise ConfigError(f"ema_init={ema_init!r} is not valid; use 'first' or 'zero'")
        if form not in ("softmax", "sigmoid"):
            raise ConfigError(f"form={form!r} is not valid; use 'softmax' or 'sigmoid'")
        self.bins = int(bins)
        self.momentum = check_range("momentum", momentum, 0.0, 1.0, high_open=True)
        self.ema_init = ema_init
        self.form = form
        self.register_buffer("acc_sum", torch.zeros(self.bins))
        self.register_buffer("seen", torch.zeros(self.bins, dtype=torch.bool))

    def gradient_norm(self, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """g per term: ``1 - p_y`` ([B], softmax) or ``|σ(z) - onehot|`` ([B, C], sigmoid)."""
        if self.form == "sigmoid":
            return (torch.sigmoid(z) - one_hot(targets, z.shape[1])).abs()
        return 1.0 - gather_target(torch.softmax(z, dim=1), targets)

    def sample_weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """β per term, detached: [B] (softmax) or [B, C] (sigmoid).

        Updates the histogram in training mode."""
        with torch.no_grad():
            z = logits.detach().float()
            g = self.gradient_norm(z, targets)
            idx = torch.floor(g * self.bins).long().clamp_(0, self.bins - 1)
            ones = torch.ones_like(g).flatten()
            counts = torch.zeros(self.bins, device=z.device).index_add_(0, idx.flatten(), ones)
            nonempty = counts > 0
            mu = self.momentum
            ema = mu * self.acc_sum + (1.0 - mu) * counts
            if self.ema_init == "first":
                ema = torch.where(self.seen, ema, counts)
            acc = torch.where(nonempty, ema, self.acc_sum)
            if self.training:
                self.acc_sum.copy_(acc)
                self.seen.logical_or_(nonempty)
            n_valid = nonempty.sum().clamp(min=1).float()
            total = float(g.numel())
            bin_weight = torch.where(nonempty, total / acc.clamp(min=1e-12), torch.zeros_like(acc)) / n_valid
            return bin_weight[idx]

    def per_sample(self, logits, targets):
        weights = self.sample_weights(logits, targets)
        z = logits.float()
        if self.form == "sigmoid":  # / C here, / B in forward: mmdetection's avg_factor B*C
            bce = F.binary_cross_entropy_with_logits(z, one_hot(targets, z.shape[1]), reduction="none")
            return (weights * bce).sum(1) / z.shape[1]
        return weights * F.cross_entropy(z, targets.long(), reduction="none")

    def extra_repr(self) -> str:
        return f"bins={self.bins}, momentum={self.momentum}, ema_init={self.ema_init!r}, form={self.form!r}"
