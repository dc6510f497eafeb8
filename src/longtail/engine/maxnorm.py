"""MaxNorm: a per-class norm cap on the classifier, enforced by projected gradient descent.

Alshammari, Wang, Ramanan, Kong, "Long-Tailed Recognition via Weight Balancing", CVPR 2022
(the "WD+MaxNorm" stage 2 that IWB, seed 000, builds on and compares against).

MaxNorm constrains every per-class weight vector to a norm ball,
``||W_c||_2 <= thr`` (``thr`` a scalar, or one value per class), and enforces it by projected
gradient descent: after every optimiser step each row is projected back onto the ball,

    W_c <- W_c * min(1, thr / ||W_c||_2).

Rows inside the ball are left untouched (multiplied by exactly 1.0); rows outside are rescaled
to norm ``thr``. :meth:`MaxNorm.apply_` does this in place with tensor ops only (no ``.item()``,
no branching on tensor values), so it can sit inside a captured CUDA graph right after the
optimiser step. Every step, as the paper's PGD (its p. 4); the released demo
(``trainval.train_model``) projects once per epoch, which its author confirms is not what was
meant (LTR-weight-balancing issue #5), so that schedule is not offered.

Threshold rule (the weight-balancing code, ``MaxNorm_via_PGD.setPerLayerThresh``, with
``thresh = 0.1`` in its stage-2 demo): the threshold is a single scalar computed once from the
classifier's norms *at the start of stage 2* (the stage-1 weights),

    thr = min_c ||W_c|| + ratio * (max_c ||W_c|| - min_c ||W_c||),   ratio = 0.1,

i.e. 10 % of the way from the smallest to the largest initial norm. Every class whose norm is
above it (the head classes, after CE training) is pulled down to it at the first projection,
while tail classes may grow up to it. That code applies the cap to the FC weight only (its bias,
being 1-D, gets an infinite threshold); we do the same: the bias is never capped. The code's
``tau`` exponent (norm**tau compared against thr) is fixed to 1 there and is not exposed here.
Other rules are named options of :meth:`MaxNorm.threshold_from_norms`:

- ``"range"`` (default, the code's rule above, ``ratio=0.1``);
- ``"max"``: ``thr = max_c ||W_c||`` (only forbids growing past the largest initial norm);
- ``"mean"``: ``thr = mean_c ||W_c||``;
- ``"per_class"``: a per-class cap, each class at its own initial norm (no class may grow).

With ``threshold=None`` the threshold is set lazily, with the chosen rule, from the first weight
passed to :meth:`apply_` (as the code's ``PGD`` does when no threshold was set); call
:meth:`apply_` once before capturing a graph so that this happens outside the capture.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError

RULES = ("range", "max", "mean", "per_class")

# Smallest norm used in the division; a zero row stays zero whatever the scale.
_TINY = 1e-12


class MaxNorm:
    """Per-class norm cap ``||W_c|| <= threshold`` by projection after each optimiser step.

    Args:
        threshold: a float (one cap for every class), a tensor of shape ``[]`` or ``[C]``
            (per-class caps), or ``None`` to set it from the first weight seen by
            :meth:`apply_` with ``rule``/``ratio``.
        rule, ratio: the threshold rule used when ``threshold`` is None (see module docstring).
    """

    def __init__(
        self,
        threshold: float | torch.Tensor | Sequence[float] | None = None,
        rule: str = "range",
        ratio: float = 0.1,
    ):
        if rule not in RULES:
            raise ConfigError(f"unknown MaxNorm rule {rule!r}; valid rules: {', '.join(RULES)}")
        self.rule = rule
        self.ratio = float(ratio)
        self.threshold: torch.Tensor | None = None
        if threshold is not None:
            thr = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
            if thr.dim() > 1:
                raise ConfigError(f"threshold must be a scalar or a [C] vector, got shape {tuple(thr.shape)}")
            if bool((thr < 0).any()) or bool(torch.isnan(thr).any()):
                raise ConfigError("MaxNorm threshold must be non-negative")
            self.threshold = thr

    # ------------------------------------------------------------------ threshold rules
    @staticmethod
    def threshold_from_norms(norms: torch.Tensor, rule: str = "range", ratio: float = 0.1) -> torch.Tensor:
        """The cap computed from per-class norms ``[C]`` (float32 tensor, scalar or ``[C]``)."""
        norms = norms.detach().float()
        if rule == "range":
            lo, hi = norms.min(), norms.max()
            return lo + ratio * (hi - lo)
        if rule == "max":
            return norms.max().clone()
        if rule == "mean":
            return norms.mean()
        if rule == "per_class":
            return norms.clone()
        raise ConfigError(f"unknown MaxNorm rule {rule!r}; valid rules: {', '.join(RULES)}")

    @classmethod
    def from_initial_norms(cls, weight: torch.Tensor, rule: str = "range", ratio: float = 0.1) -> "MaxNorm":
        """MaxNorm whose threshold comes from the current (initial) row norms of ``weight [C, D]``.

        Default: the weight-balancing code's rule, ``min + 0.1 * (max - min)`` of the norms.
        """
        if weight.dim() != 2:
            raise ConfigError(f"MaxNorm expects a [C, D] weight, got shape {tuple(weight.shape)}")
        norms = torch.linalg.vector_norm(weight.detach().float(), dim=1)
        return cls(cls.threshold_from_norms(norms, rule, ratio), rule=rule, ratio=ratio)

    # ------------------------------------------------------------------ projection
    def to(self, device: torch.device | str) -> "MaxNorm":
        if self.threshold is not None:
            self.threshold = self.threshold.to(device)
        return self

    @torch.no_grad()
    def apply_(self, weight: torch.Tensor) -> torch.Tensor:
        """Project ``weight [C, D]`` in place onto ``{||W_c|| <= thr}``; returns ``weight``."""
        if weight.dim() != 2:
            raise ConfigError(f"MaxNorm expects a [C, D] weight, got shape {tuple(weight.shape)}")
        if self.threshold is None:
            self.threshold = self.threshold_from_norms(
                torch.linalg.vector_norm(weight.float(), dim=1), self.rule, self.ratio
            )
        if self.threshold.device != weight.device:
            self.threshold = self.threshold.to(weight.device)
        norms = torch.linalg.vector_norm(weight.float(), dim=1)
        scale = torch.clamp(self.threshold / norms.clamp_min(_TINY), max=1.0)
        weight.mul_(scale.unsqueeze(1).to(weight.dtype))
        return weight

    __call__ = apply_

    def __repr__(self) -> str:
        thr = None if self.threshold is None else self.threshold.tolist()
        return f"MaxNorm(threshold={thr}, rule={self.rule!r}, ratio={self.ratio})"
