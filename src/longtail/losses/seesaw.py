"""Seesaw loss (Wang et al. 2021), softmax classification form.

Wang, Zhang, Zang, Cao, Pang, Gong, Chen, Liu, Loy, Lin. "Seesaw Loss for Long-Tailed Instance
Segmentation", CVPR 2021.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LOSSES, Loss, counts_tensor
from .ce import check_range, gather_target, one_hot


@LOSSES.register("seesaw")
class SeesawLoss(Loss):
    r"""Seesaw loss: a softmax cross-entropy whose negative terms are rescaled per sample.

    .. math::  \ell(z, y) = -\log\frac{e^{z_y}}{e^{z_y} + \sum_{j\ne y} S_{yj}\, e^{z_j}},
               \qquad S_{ij} = M_{ij}\, C_{ij}

    Mitigation factor (from the numbers of samples :math:`N` of each class *accumulated over the
    training batches seen so far*):
    :math:`M_{ij} = (N_j/N_i)^p` if :math:`N_j < N_i`, else 1.
    Compensation factor (from the detached predicted probabilities σ of the sample):
    :math:`C_{ij} = (\sigma_j/\sigma_i)^q` if :math:`\sigma_j > \sigma_i`, else 1.

    Gradients (the paper's Eq. 2-3, S treated as a constant): with
    :math:`\tilde\sigma_j = S_{yj}e^{z_j}/(e^{z_y} + \sum_{k\ne y}S_{yk}e^{z_k})`,
    :math:`\partial\ell/\partial z_j = \tilde\sigma_j` for j ≠ y and
    :math:`\tilde\sigma_y - 1` for the true class.

    Defaults are the paper's: p = 0.8, q = 2.0. Implementation follows the authors'
    (mmdetection) ``seesaw_ce_loss``: implemented as logits :math:`z_j + \log S_{yj}` for j ≠ y;
    σ_i is clamped below at ``eps`` = 1e-2 in the compensation ratio; counts are clamped below at 1.
    The accumulated counts are the int64 buffer ``cum_counts`` [C], updated in place from each
    training batch's targets *before* the loss is computed (as in mmdetection), only while the
    module is in training mode (``loss.eval()`` freezes them). The update is an ``index_add_``
    of fixed shape, so the step stays capturable in a CUDA graph. ``class_counts`` is used only
    for the number of classes (the paper accumulates counts online, starting from zero).
    The detection-specific parts (objectness branch, normalised linear head) are not included.
    """

    def __init__(self, class_counts, p: float = 0.8, q: float = 2.0, eps: float = 1e-2):
        super().__init__()
        num_classes = counts_tensor(class_counts).numel()
        self.p = check_range("p", p, 0.0, float("inf"))
        self.q = check_range("q", q, 0.0, float("inf"))
        self.eps = check_range("eps", eps, 0.0, 1.0)
        self.register_buffer("cum_counts", torch.zeros(num_classes, dtype=torch.int64))

    @torch.no_grad()
    def update_counts(self, targets: torch.Tensor) -> None:
        """Add the batch's label counts to ``cum_counts`` in place (fixed shape, no sync)."""
        t = targets.long()
        self.cum_counts.index_add_(0, t, torch.ones_like(t))

    def log_seesaw_factors(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        r""":math:`\log S_{y_i j}` for every sample and class, ``[B, C]`` (0 on the true class), detached."""
        z = logits.detach().float()
        log_s = torch.zeros_like(z)
        if self.p > 0:
            n = self.cum_counts.float().clamp(min=1.0)
            ratio = n.unsqueeze(0) / n[targets].unsqueeze(1)  # [i, j] = N_j / N_{y_i}
            log_s = log_s + torch.where(ratio < 1.0, self.p * torch.log(ratio), torch.zeros_like(ratio))
        if self.q > 0:
            probs = torch.softmax(z, dim=1)
            self_p = gather_target(probs, targets).clamp(min=self.eps)
            ratio = probs / self_p.unsqueeze(1)  # [i, j] = sigma_j / sigma_{y_i}
            log_s = log_s + torch.where(ratio > 1.0, self.q * torch.log(ratio), torch.zeros_like(ratio))
        return log_s * (1.0 - one_hot(targets, z.shape[1]))

    def per_sample(self, logits, targets):
        if self.training:
            self.update_counts(targets)
        z = logits.float()
        return F.cross_entropy(z + self.log_seesaw_factors(z, targets), targets.long(), reduction="none")

    def extra_repr(self) -> str:
        return f"p={self.p}, q={self.q}, eps={self.eps}, num_classes={self.cum_counts.numel()}"
