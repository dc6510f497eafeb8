"""Learning-rate schedules as per-step factor tables (so a CUDA graph can read them on device).

The factor multiplies each parameter group's base learning rate. Epoch-level schedules are
constant within an epoch, as in the reference code of Cao et al. (2019) and Alshammari et al.
(2022):

- multistep with linear warm-up: f(e) = (e + 1) / W for e < W, then gamma^(number of milestones <= e)
- cosine: f(e) = final + (1 - final) * (1 + cos(pi * e / E)) / 2 (PyTorch's CosineAnnealingLR,
  stepped per epoch; reaches ``final`` after the last epoch), with the same optional warm-up
- constant: f = 1
"""
from __future__ import annotations

import math

import numpy as np

from ..config import ScheduleConfig


def epoch_factor(schedule: ScheduleConfig, epoch: int, epochs: int, base_lr: float) -> float:
    """The learning-rate factor of 0-based ``epoch`` out of ``epochs``."""
    if schedule.warmup_epochs and epoch < schedule.warmup_epochs:
        return (epoch + 1) / schedule.warmup_epochs
    if schedule.name == "multistep":
        return schedule.gamma ** sum(epoch >= m for m in schedule.milestones)
    if schedule.name == "cosine":
        final = schedule.final_lr / base_lr if base_lr else 0.0
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return 1.0


def factor_table(schedule: ScheduleConfig, epochs: int, steps_per_epoch: int, base_lr: float) -> np.ndarray:
    """Factors for every step of the stage, shape ``(epochs * steps_per_epoch,)``, float32."""
    per_epoch = np.array([epoch_factor(schedule, e, epochs, base_lr) for e in range(epochs)], np.float32)
    return np.repeat(per_epoch, steps_per_epoch)
