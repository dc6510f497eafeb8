"""Knowledge distillation loss (Hinton et al. 2015).

Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep Learning
Workshop (arXiv 1503.02531, 2015).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .ce import check_range


class DistillationLoss(nn.Module):
    r"""Temperature-scaled KL divergence from teacher to student.

    .. math::  \ell(s, t) = T^2\,\mathrm{KL}\big(\mathrm{softmax}(t/T)\ \|\ \mathrm{softmax}(s/T)\big)
               = T^2\sum_c q_c(\log q_c - \log p_c),\quad q = \mathrm{softmax}(t/T),\ p = \mathrm{softmax}(s/T)

    The T² factor keeps the gradient scale independent of T (Hinton et al.). T = 2.0 by default.
    The teacher logits are detached. ``class_subset`` (indices, or a boolean mask of length C)
    restricts both distributions to those classes, renormalised over them (e.g. GLAG's KD on the
    head classes); it is a buffer, selected with ``index_select`` (graph-safe).

    Not a :class:`~longtail.losses.base.Loss` (it takes two sets of logits, no targets) and not
    registered. :meth:`per_sample` gives the [B] vector, so callers can weigh samples (e.g. by
    α(T), or by a mask of head-class samples); :meth:`forward` is the mean of
    ``sample_weight * per_sample``.
    """

    def __init__(self, temperature: float = 2.0, class_subset: Sequence[int] | Sequence[bool] | torch.Tensor | None = None):
        super().__init__()
        self.temperature = check_range("temperature", temperature, 1e-8, float("inf"))
        if class_subset is None:
            self.class_subset = None
        else:
            sub = torch.as_tensor(class_subset)
            if sub.dtype == torch.bool:
                sub = sub.nonzero().flatten()
            sub = sub.long().flatten()
            if sub.numel() == 0:
                raise ConfigError("class_subset is empty; pass at least one class index or None")
            self.register_buffer("class_subset", sub)

    def per_sample(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        s = student_logits.float()
        t = teacher_logits.detach().float()
        if self.class_subset is not None:
            s = s.index_select(1, self.class_subset)
            t = t.index_select(1, self.class_subset)
        T = self.temperature
        log_p = F.log_softmax(s / T, dim=1)
        log_q = F.log_softmax(t / T, dim=1)
        return (T * T) * (log_q.exp() * (log_q - log_p)).sum(dim=1)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        losses = self.per_sample(student_logits, teacher_logits)
        if sample_weight is not None:
            losses = losses * sample_weight
        return losses.mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
