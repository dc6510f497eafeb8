"""GHM-C: gradient harmonizing classification loss (Li et al. 2019), softmax form.

Li, Liu, Wang. "Gradient Harmonized Single-stage Detector", AAAI 2019.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import LOSSES, Loss
from .ce import check_range, gather_target


@LOSSES.register("ghm_c")
class GHMCLoss(Loss):
    r"""GHM-C loss on softmax cross-entropy: weigh each sample by the inverse gradient density.

    .. math::  \mathcal{L} = \frac{1}{B}\sum_{i=1}^{B} \beta_i\,\mathrm{CE}(z_i, y_i),\qquad
               \beta_i = \frac{B}{GD(g_i)},\qquad g_i = 1 - p_{i,y_i}

    g is the norm of the gradient of CE with respect to the true-class logit (detached).
    Unit-region approximation: [0, 1] is cut into ``bins`` (30) equal-width regions; the density
    of region r is its (momentum-averaged) count times the number of non-empty regions n, so
    :math:`\beta_i = B / (n \cdot R_{r(i)})` with :math:`R_r \leftarrow \mu R_r + (1-\mu)\,c_r`
    for every region with :math:`c_r > 0` samples in the batch (μ = ``momentum`` = 0.75, the
    paper's value); empty regions keep their R and give no weight. With μ = 0 the weights of a
    batch sum to B (mean weight 1). The gradient with respect to the logits is
    :math:`\beta_i (p_i - e_{y_i})` with β treated as a constant.

    Follows mmdetection's ``GHMC`` (the authors' code) with the sigmoid g = |σ(z) − y| replaced by
    the softmax g = 1 − p_y, as in the GHM baselines of the long-tailed classification papers
    (GHM-CWAP, seed 002). One difference, documented: mmdetection starts R at 0, so a region's
    first update gives R = (1−μ)·c and inflates its weight by 1/(1−μ); here by default
    (``ema_init="first"``) a region's first non-empty batch sets R = c. ``ema_init="zero"``
    reproduces mmdetection. The histogram ``acc_sum`` [bins] and the flags ``seen`` [bins] are
    buffers updated in place, in training mode only, without host synchronisation.
    """

    def __init__(self, bins: int = 30, momentum: float = 0.75, ema_init: str = "first"):
        super().__init__()
        if int(bins) != bins or bins < 1:
            raise ConfigError(f"bins={bins} must be a positive integer (the paper uses 30)")
        if ema_init not in ("first", "zero"):
            raise ConfigError(f"ema_init={ema_init!r} is not valid; use 'first' or 'zero'")
        self.bins = int(bins)
        self.momentum = check_range("momentum", momentum, 0.0, 1.0, high_open=True)
        self.ema_init = ema_init
        self.register_buffer("acc_sum", torch.zeros(self.bins))
        self.register_buffer("seen", torch.zeros(self.bins, dtype=torch.bool))

    def sample_weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """β_i for the batch ([B], detached); updates the histogram in training mode."""
        with torch.no_grad():
            z = logits.detach().float()
            g = 1.0 - gather_target(torch.softmax(z, dim=1), targets)
            idx = torch.floor(g * self.bins).long().clamp_(0, self.bins - 1)
            counts = torch.zeros(self.bins, device=z.device).index_add_(0, idx, torch.ones_like(g))
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
            total = float(z.shape[0])
            bin_weight = torch.where(nonempty, total / acc.clamp(min=1e-12), torch.zeros_like(acc)) / n_valid
            return bin_weight[idx]

    def per_sample(self, logits, targets):
        weights = self.sample_weights(logits, targets)
        return weights * F.cross_entropy(logits.float(), targets.long(), reduction="none")

    def extra_repr(self) -> str:
        return f"bins={self.bins}, momentum={self.momentum}, ema_init={self.ema_init!r}"
