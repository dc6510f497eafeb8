"""Softmax cross-entropy, and small tensor helpers the other baseline losses share.

Everything here is capturable in a CUDA graph: fixed shapes, no host synchronisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import LOSSES, Loss


def one_hot(targets: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot ``[B, C]`` built with ``scatter_`` (no value checks, so no host sync on CUDA)."""
    out = torch.zeros(targets.shape[0], num_classes, dtype=dtype, device=targets.device)
    return out.scatter_(1, targets.long().unsqueeze(1), 1.0)


def gather_target(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``values[i, targets[i]]`` for every row, shape ``[B]``."""
    return values.gather(1, targets.long().unsqueeze(1)).squeeze(1)


def check_range(name: str, value: float, low: float, high: float, *, high_open: bool = False) -> float:
    """Validate a hyper-parameter; raise :class:`ConfigError` naming the option and the range."""
    value = float(value)
    bad = value < low or (value >= high if high_open else value > high)
    if bad:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{name}={value} is out of range; use a value in [{low}, {high}{bracket}")
    return value


@LOSSES.register("ce")
class CrossEntropyLoss(Loss):
    r"""Softmax cross-entropy, optionally with (uniform) label smoothing.

    .. math::  \ell(z, y) = -(1-\varepsilon)\log p_y - \frac{\varepsilon}{C}\sum_{j=1}^{C} \log p_j,
               \qquad p = \mathrm{softmax}(z)

    ``label_smoothing`` = ε follows :func:`torch.nn.functional.cross_entropy` (Szegedy et al.
    2016, "Rethinking the Inception architecture"): the smoothing mass ε is spread uniformly
    over all C classes, the true class included. ε = 0 (default) is plain cross-entropy.
    Computed in float32 whatever the logits' dtype.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), targets.long(), reduction="none", label_smoothing=self.label_smoothing
        )

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
