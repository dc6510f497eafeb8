"""Softmax equalization loss (Tan et al. 2020).

Tan, Wang, Li, Li, Ouyang, Yin, Yan. "Equalization Loss for Long-Tailed Object Recognition",
CVPR 2020 (Section on image classification: the softmax equalization loss, SEQL).
"""
from __future__ import annotations

import torch

from .base import LOSSES, Loss, counts_tensor
from .ce import check_range, gather_target, one_hot


@LOSSES.register("equalization")
class SoftmaxEqualizationLoss(Loss):
    r"""Softmax equalization loss: drop (at random) the negative terms of rare classes.

    .. math::  \ell(z, y) = -\log\tilde p_y,\qquad
               \tilde p_y = \frac{e^{z_y}}{\sum_{k=1}^{C}\tilde w_k e^{z_k}},\qquad
               \tilde w_k = 1 - \beta\, T_\lambda(f_k)\,(1 - y_k)

    :math:`f_k = n_k / N` is the frequency of class k; :math:`T_\lambda(f) = 1` if
    :math:`f < \lambda` else 0 (the "tail" classes); β ~ Bernoulli(γ) (1 with probability γ).
    The gradient of a tail class's logit is therefore zero for samples of other classes whenever
    β = 1: :math:`\partial\ell/\partial z_k = \tilde w_k e^{z_k}/\sum_j\tilde w_j e^{z_j} - y_k`.

    β is drawn **independently for every (sample, class) entry** with ``torch.rand`` on the
    logits' device from ``self.generator`` (the run's, set by the engine; graph-capturable). The draw
    happens in eval mode too, so the eval loss is random unless γ is 0 or 1.

    Defaults: ``threshold`` λ = 3.0e-3 and ``gamma`` γ = 0.9, the values we recall from the
    paper's CIFAR-100-LT experiments (for ImageNet-LT it uses a smaller λ, ≈ 4.3e-4). λ is data-set
    dependent — the paper picks it through the "tail ratio" — so set it per data set and check
    the value against the paper before quoting numbers. With λ = 3e-3 (tail: < 0.3% of the
    training images) no class of CIFAR-10-LT is a tail class at IF 100 or 10 (the smallest holds
    0.40% / 2.4%), so the loss *is* cross-entropy there; 1 class is at IF 200, 2 at IF 500, and
    41 of CIFAR-100-LT's 100 at IF 100. The authors' reference code for ImageNet-LT
    (eql.detectron2 issue #9) compares λ with raw image counts (tail iff count ≤ λ); here λ is a
    frequency, f < λ, as in the paper's equation.
    """

    def __init__(self, class_counts, threshold: float = 3.0e-3, gamma: float = 0.9):
        super().__init__()
        counts = counts_tensor(class_counts)
        self.threshold = check_range("threshold", threshold, 0.0, 1.0)
        self.gamma = check_range("gamma", gamma, 0.0, 1.0)
        freq = counts / counts.sum()
        self.register_buffer("tail", (freq < self.threshold).float())

    def per_sample(self, logits, targets):
        z = logits.float()
        negatives = 1.0 - one_hot(targets, z.shape[1])
        beta = (torch.rand(z.shape, generator=self.generator, device=z.device) < self.gamma).float()
        drop = (beta * self.tail.unsqueeze(0) * negatives) > 0  # w~_k == 0
        return torch.logsumexp(z.masked_fill(drop, float("-inf")), dim=1) - gather_target(z, targets)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, gamma={self.gamma}, tail_classes={int(self.tail.sum())}"
