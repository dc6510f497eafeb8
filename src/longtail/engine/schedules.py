"""Learning-rate schedules as per-step factor tables (so a CUDA graph can read them on device).

The factor multiplies each parameter group's base learning rate; the schedules themselves are
registered by name in ``longtail.schedules.SCHEDULES`` (multistep, cosine, constant, each with the
optional linear warm-up: see that module).
"""
from __future__ import annotations

import numpy as np

from ..config import ScheduleConfig
from ..schedules import SCHEDULES, Schedule, epoch_factor

__all__ = ["SCHEDULES", "Schedule", "epoch_factor", "factor_table"]


def factor_table(schedule: ScheduleConfig, epochs: int, steps_per_epoch: int, base_lr: float) -> np.ndarray:
    """Factors for every step of the stage, shape ``(epochs * steps_per_epoch,)``, float32."""
    per_epoch = np.array([epoch_factor(schedule, e, epochs, base_lr) for e in range(epochs)], np.float32)
    return np.repeat(per_epoch, steps_per_epoch)
