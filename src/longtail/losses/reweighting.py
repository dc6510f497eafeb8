"""Deferred re-weighting, DRW (Cao et al. 2019).

Cao, Wei, Gaidon, Arechiga, Ma. "Learning Imbalanced Datasets with Label-Distribution-Aware
Margin Loss", NeurIPS 2019 (Algorithm 1, "deferred re-balancing optimization schedule").
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .base import LOSSES, Loss, build_loss
from .class_balanced import check_normalize, class_balanced_weights, weighted_mean


@LOSSES.register("drw")
class DeferredReweighting(Loss):
    r"""Wrap a loss and switch on class-balanced weights from ``start_epoch`` on.

    .. math::  \mathcal{L} = \frac{\sum_i w_{y_i}\,\ell(z_i, y_i)}{\sum_i w_{y_i}},\qquad
               w = \begin{cases} \mathbf{1} & \text{epoch} < \text{start\_epoch}\\
               \text{CB weights } (1-\beta)/(1-\beta^{n_c}),\ \sum_c w_c = C & \text{otherwise}\end{cases}

    Defaults are Cao et al.'s CIFAR recipe: base loss ``"ldam"`` (LDAM-DRW), ``start_epoch`` = 160
    (0-based epoch index; 200 epochs), β = 0.9999. ``normalize="weights"`` (default) divides by
    :math:`\sum_i w_{y_i}` as their code does (``F.cross_entropy(..., weight=w)``);
    ``normalize="batch"`` divides by B instead.

    ``base`` is a registered loss name (built with :func:`build_loss`, receiving ``class_counts``
    and ``**base_options``) or an already built :class:`Loss`; its ``per_sample`` is used (a base
    that overrides ``forward`` with its own reduction is reduced as above instead). A base with a
    ``class_weighted_per_sample(logits, targets, weights)`` method (the softmax focal loss) places the
    weights itself: for ``focal`` with ``weight_form: ldam_code`` the weight goes inside the
    modulating factor, as in Cao et al.'s code; add ``normalize: batch`` for their reduction (mean
    over the batch), i.e. their Focal + DRW is ``{name: drw, base: focal, gamma: 1.0,
    weight_form: ldam_code, normalize: batch}``. In a config:
    ``loss: {name: drw, base: ldam, start_epoch: 160, max_m: 0.5, s: 30}``.
    The current weights are the buffer ``weights`` [C], switched in place (``copy_``) in
    :meth:`on_epoch_start`, which also forwards the call to the base loss.
    """

    epoch_params = ("start_epoch",)

    @classmethod
    def epoch_params_of(cls, options) -> tuple[str, ...]:
        """``start_epoch`` and the base loss's epoch-valued options (they share the mapping)."""
        base = options.get("base", "ldam")
        return cls.epoch_params + (LOSSES.get(base).epoch_params_of(options) if isinstance(base, str) else ())

    @classmethod
    def head_required_by(cls, options) -> str | None:
        """The base loss's head requirement (LDAM-DRW: the cosine head)."""
        base = options.get("base", "ldam")
        return LOSSES.get(base).head_required_by(options) if isinstance(base, str) else base.requires_head

    def __init__(self, class_counts, base: str | Loss = "ldam", start_epoch: int = 160,
                 beta: float = 0.9999, normalize: str = "weights", **base_options: Any):
        super().__init__()
        if isinstance(base, Loss):
            if base_options:
                raise ConfigError(f"options {sorted(base_options)} given with an already built base loss")
            self.base = base
        else:
            self.base = build_loss(base, class_counts=class_counts, **base_options)
        if getattr(self.base, "uses_features", False):
            raise ConfigError("drw cannot wrap a loss that uses features")
        if int(start_epoch) != start_epoch or start_epoch < 0:
            raise ConfigError(f"start_epoch={start_epoch} must be a non-negative integer")
        self.start_epoch = int(start_epoch)
        self.beta = float(beta)
        self.normalize = check_normalize(normalize)
        cb = class_balanced_weights(class_counts, beta)
        self.register_buffer("cb_weights", cb)
        self.register_buffer("weights", torch.ones_like(cb) if self.start_epoch > 0 else cb.clone())

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        with torch.no_grad():
            if epoch >= self.start_epoch:
                self.weights.copy_(self.cb_weights)
            else:
                self.weights.fill_(1.0)
        self.base.on_epoch_start(epoch, total_epochs)

    def loss_changes_at(self, epoch: int) -> bool:
        return epoch == self.start_epoch or self.base.loss_changes_at(epoch)

    def on_epoch_end(self) -> None:
        self.base.on_epoch_end()

    def per_sample(self, logits, targets):
        weighted = getattr(self.base, "class_weighted_per_sample", None)
        if weighted is not None:  # the base places the weights itself (focal's weight_form)
            return weighted(logits, targets, self.weights)
        return self.weights[targets] * self.base.per_sample(logits, targets)

    def forward(self, logits, targets, sample_weight=None):
        return weighted_mean(self.per_sample(logits, targets), self.weights[targets], sample_weight, self.normalize)

    def extra_repr(self) -> str:
        return f"start_epoch={self.start_epoch}, beta={self.beta}, normalize={self.normalize!r}"
