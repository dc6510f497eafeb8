"""GraLoss, the Gradual Balanced Loss of GLAG (seed 001).

Zhang & Xiang, "Long-Tailed Classification with Gradual Balanced Loss and Adaptive Feature
Generation" (GLAG), Sec. 4.1, Eqs. (3)-(4):

    alpha(T) = s * (c ** (T / T_max) - 1)                                   (3)
    loss(y, z) = -log( exp(z_y + alpha * log p_y) / sum_y' exp(z_y' + alpha * log p_y') )  (4)

i.e. the logit-adjusted cross-entropy of Menon et al. (2020) with its tau replaced by alpha(T),
which grows from 0 at the first epoch ("first learn the easy knowledge from the head classes")
to about s*(c-1) at the end. p_y = n_y / N is the training label prior. Paper defaults: c = 2,
s = 1 (CIFAR-100-LT, ImageNet-LT), s = 0.5 on iNaturalist; the convex form with c = 2 is the
best of its Table 5.

Decisions on what the paper leaves open (all named options of :func:`gradual_alpha`):

- T counts from 0: T is the 0-based epoch index passed to ``on_epoch_start(epoch, total_epochs)``
  and T_max = total_epochs, so the first epoch trains with alpha = 0 (plain CE) and the last
  with s*(c**((T_max-1)/T_max) - 1), just below s*(c-1) (the usual
  ``for epoch in range(epochs): alpha = s*(c**(epoch/epochs)-1)``). ``inclusive_end=True`` uses
  T / (T_max - 1) instead, so that the last epoch reaches s*(c-1) exactly.
- alpha is constant within an epoch ("T is the current epoch"), updated in place in
  ``on_epoch_start``.
- Table 5 / Fig. 3 name linear, concave and convex forms but give only Eq. (3) ("with different
  c, alpha will be in concave, linear or convex forms"). We use three members of the Eq. (3)
  family that share both endpoints, alpha(0) = 0 and alpha(1) = s*(c-1), with ep = T / T_max:

    convex:  alpha = s * (c ** ep - 1)                    (Eq. 3 as printed, c > 1)
    linear:  alpha = s * (c - 1) * ep                     (the limit of the family as c -> 1,
                                                           rescaled to the same endpoint)
    concave: alpha = s * (c - c ** (1 - ep))              (Eq. 3 with c' = 1/c, s' = -s*c:
                                                           s'*(c'**ep - 1); the convex curve
                                                           mirrored through the segment's midpoint)

  With the defaults c = 2, s = 1 all three go from 0 to 1 and at mid-training
  convex (0.414) < linear (0.5) < concave (0.586). Table 5's convex c = 4, 6, 8 rows are
  ``schedule="convex", c=4`` etc. with s = 1 as printed (they end at c - 1; the paper does not
  say it rescaled s). The text's "increase smoothly from zero to one" holds for c = 2, s = 1;
  for the other c it needs s = 1 / (c - 1) (e.g. ``c=4, s=0.3333``), a reading the paper leaves
  open.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .base import LOSSES
from ..errors import ConfigError
from .logit_adjust import LogitAdjustedLoss

SCHEDULES = ("convex", "linear", "concave")


def gradual_alpha(
    epoch: int,
    total_epochs: int,
    s: float = 1.0,
    c: float = 2.0,
    schedule: str = "convex",
    inclusive_end: bool = False,
) -> float:
    """GLAG's alpha(T) (Eq. 3) for 0-based ``epoch`` out of ``total_epochs``.

    Also the weight of GLAG's stage-2 KD loss (Eq. 11: "alpha shares the same form as Eq. 3").
    See the module docstring for the three schedules and the epoch convention.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown alpha schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if total_epochs < 1:
        raise ConfigError(f"total_epochs must be >= 1, got {total_epochs}")
    if not c > 1.0:
        raise ConfigError(f"c must be > 1 (c = 1 makes alpha identically 0), got {c}")
    denom = (total_epochs - 1) if inclusive_end else total_epochs
    if epoch < 0 or (denom > 0 and epoch > denom) or (denom == 0 and epoch > 0):
        raise ConfigError(
            f"epoch must be in [0, {max(denom, 0)}] for total_epochs={total_epochs} "
            f"(inclusive_end={inclusive_end}), got {epoch}"
        )
    ep = 0.0 if denom == 0 else epoch / denom
    if schedule == "convex":
        return float(s * (c**ep - 1.0))
    if schedule == "linear":
        return float(s * (c - 1.0) * ep)
    return float(s * (c - c ** (1.0 - ep)))  # concave


@LOSSES.register("graloss")
class GradualLogitAdjustedLoss(LogitAdjustedLoss):
    """GraLoss (GLAG, Eqs. 3-4): CE(z + alpha(T) * log pi), alpha(T) = s*(c**(T/T_max) - 1).

    A :class:`LogitAdjustedLoss` whose tau buffer is alpha(T), rewritten in place (``set_scale``)
    at every ``on_epoch_start(epoch, total_epochs)``; before the first call alpha = 0 (plain CE,
    the value of Eq. 3 at T = 0). The forward pass is the parent's (graph-capturable).

    Args:
        class_counts: training-split images per class (the prior pi_c = n_c / N).
        s, c: Eq. (3) scale and base; paper defaults s = 1 (0.5 on iNaturalist), c = 2.
        schedule: "convex" (Eq. 3, default), "linear" or "concave" (Table 5; module docstring).
        inclusive_end: use T / (T_max - 1) so that the last epoch reaches alpha = s*(c-1).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        s: float = 1.0,
        c: float = 2.0,
        schedule: str = "convex",
        inclusive_end: bool = False,
    ):
        # validate the schedule options once, here, rather than at the first epoch
        gradual_alpha(0, 1, s=s, c=c, schedule=schedule)
        super().__init__(class_counts, tau=0.0)
        self.s = float(s)
        self.c = float(c)
        self.schedule = schedule
        self.inclusive_end = bool(inclusive_end)

    def alpha_at(self, epoch: int, total_epochs: int) -> float:
        return gradual_alpha(
            epoch, total_epochs, s=self.s, c=self.c, schedule=self.schedule, inclusive_end=self.inclusive_end
        )

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        super().on_epoch_start(epoch, total_epochs)
        self.set_scale(self.alpha_at(epoch, total_epochs))

    def extra_repr(self) -> str:
        return f"s={self.s}, c={self.c}, schedule={self.schedule!r}, inclusive_end={self.inclusive_end}"


__all__ = ["gradual_alpha", "GradualLogitAdjustedLoss", "SCHEDULES"]
