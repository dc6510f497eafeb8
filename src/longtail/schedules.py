"""Learning-rate schedules by name: the ``SCHEDULES`` registry (a stage's ``schedule.name``).

A schedule gives the learning-rate factor of each epoch after the warm-up (the linear warm-up
(e + 1) / W of ``schedule.warmup_epochs`` is the same for every schedule and applied before it;
``engine/schedules.py`` turns the factors into per-step tables). Epoch-level schedules are
constant within an epoch, as in the reference code of Cao et al. (2019) and Alshammari et al.
(2022):

- multistep: f(e) = gamma^(number of milestones <= e)
- cosine: f(e) = final + (1 - final) * (1 + cos(pi * e / E)) / 2 (PyTorch's CosineAnnealingLR,
  stepped per epoch; reaches ``final`` after the last epoch)
- constant: f = 1

A new schedule is a :class:`Schedule` subclass registered by name; config validation accepts every
registered name (register it before the config is loaded). This module imports nothing of the
engine, so that ``config.py`` can read it::

    @SCHEDULES.register("linear_decay")
    class LinearDecay(Schedule):
        @staticmethod
        def factor(schedule, epoch, epochs, base_lr):
            return 1.0 - epoch / epochs
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .registry import Registry

if TYPE_CHECKING:
    from .config import ScheduleConfig

SCHEDULES = Registry("schedule")


class Schedule:
    """A learning-rate schedule of :data:`SCHEDULES`, read from the stage's :class:`ScheduleConfig`."""

    @staticmethod
    def factor(schedule: ScheduleConfig, epoch: int, epochs: int, base_lr: float) -> float:
        """The factor of 0-based ``epoch`` (at or after the warm-up) out of ``epochs``; it multiplies
        each parameter group's base learning rate (``base_lr``: that of the group the table is for)."""
        raise NotImplementedError

    @staticmethod
    def ignored_keys(schedule: ScheduleConfig) -> tuple[str, ...]:
        """``ScheduleConfig`` fields this schedule does not read, so that runs differing only in them
        still train stacked (``engine/stacked.py``); the default, none, is always safe."""
        return ()


@SCHEDULES.register("multistep")
class MultiStep(Schedule):
    """f(e) = gamma^(number of milestones <= e)."""

    @staticmethod
    def factor(schedule: ScheduleConfig, epoch: int, epochs: int, base_lr: float) -> float:
        return schedule.gamma ** sum(epoch >= m for m in schedule.milestones)

    @staticmethod
    def ignored_keys(schedule: ScheduleConfig) -> tuple[str, ...]:
        return ("final_lr",) if schedule.milestones else ("gamma", "final_lr")


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """f(e) = final + (1 - final) * (1 + cos(pi * e / E)) / 2, final = final_lr / base_lr."""

    @staticmethod
    def factor(schedule: ScheduleConfig, epoch: int, epochs: int, base_lr: float) -> float:
        final = schedule.final_lr / base_lr if base_lr else 0.0
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))

    @staticmethod
    def ignored_keys(schedule: ScheduleConfig) -> tuple[str, ...]:
        return ("gamma",)


@SCHEDULES.register("constant")
class Constant(Schedule):
    """f = 1."""

    @staticmethod
    def factor(schedule: ScheduleConfig, epoch: int, epochs: int, base_lr: float) -> float:
        return 1.0

    @staticmethod
    def ignored_keys(schedule: ScheduleConfig) -> tuple[str, ...]:
        return ("gamma", "final_lr")


def epoch_factor(schedule: ScheduleConfig, epoch: int, epochs: int, base_lr: float) -> float:
    """The learning-rate factor of 0-based ``epoch`` out of ``epochs``: the linear warm-up
    (e + 1) / W for e < W, then the named schedule's factor."""
    if schedule.warmup_epochs and epoch < schedule.warmup_epochs:
        return (epoch + 1) / schedule.warmup_epochs
    return SCHEDULES.get(schedule.name).factor(schedule, epoch, epochs, base_lr)
