"""Rescale a recipe's schedule to a shorter (or longer) run by fraction: ``epoch_scale``.

A CPU proxy of a 200-epoch CIFAR recipe trains, say, 20 epochs; every epoch-valued event of the
recipe must then move with it, or a DRW switch at epoch 160 never happens and warm-up eats the run.
``epoch_scale: s`` (a top-level config key, e.g. ``--set epoch_scale=0.1``) maps each value ``v`` of
the keys in :data:`STAGE_EPOCH_KEYS` to ``floor(v * s + 1/2)`` (half up), so the event keeps its
fraction of the stage: ``v / E -> v' / E'`` with ``E' = max(1, floor(E * s + 1/2))``, within half
an epoch. The keys are found wherever they sit inside a stage (the stage itself, its schedule, its
loss and a wrapped base loss, its sampler, its options), so a new recipe needs no code here; a key
that holds epochs under another name must be added to the table (a test scans every packaged
recipe for names containing "epoch"). Events that the code derives from the stage length (GLAG's
alpha(T) = f(T / T_max), progressive sampling, cosine schedules) follow the scaled length itself.

Which stages: those that train the encoder (``train: all``). Classifier stages on frozen features
(``train: head``: cRT, LWS, IWB's and BWLM's second stages, LADC, GLAG's AFG) keep their length:
they are already short (10-40 epochs), cheap, and shortening them changes the method rather than the
budget. Engine and evaluation periods in epochs (``engine.checkpoint_every``, ``eval.every``) scale
with the whole-network stages (never below 1 when set).

The scale is applied once, when the config is loaded: the resolved config holds the scaled values,
``epoch_scale: 1.0`` and ``scaled_by: s`` (so loading a resolved config again does not scale twice;
a further ``epoch_scale`` composes: ``scaled_by`` multiplies).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import RunConfig, StageConfig

STAGE_EPOCH_KEYS = {
    "epochs": 1,  # the stage length (at least one epoch)
    "iterations": 1,  # a stage given in steps instead (0: unset)
    "warmup_epochs": 0,  # linear warm-up of the schedule
    "milestones": 1,  # multistep decays (a list; kept inside 1 .. epochs - 1)
    "start_epoch": 0,  # DRW's re-weighting switch, DRS's re-sampling switch (loss / sampler)
}
"""Epoch-valued keys inside a stage, with the least value a non-zero entry may be scaled to."""

NOT_EPOCH_VALUED = {"resample_each_epoch"}
"""Stage keys whose names mention epochs but hold no epoch count (a switch)."""


def _scale(value: int, factor: float, least: int) -> int:
    if value == 0:
        return 0
    return max(least, math.floor(value * factor + 0.5))


def _walk(node: Any, factor: float) -> Any:
    """``node`` (a loss, sampler or options mapping, or anything inside one) with its epoch-valued keys scaled."""
    if isinstance(node, list):
        return [_walk(item, factor) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in STAGE_EPOCH_KEYS and isinstance(value, int) and not isinstance(value, bool):
            out[key] = _scale(value, factor, STAGE_EPOCH_KEYS[key])
        else:
            out[key] = _walk(value, factor)
    return out


def scale_stage(stage: StageConfig, factor: float) -> None:
    """Scale one stage in place: its length, schedule events, and the epoch keys of its mappings."""
    stage.epochs = _scale(stage.epochs, factor, STAGE_EPOCH_KEYS["epochs"])
    stage.iterations = _scale(stage.iterations, factor, STAGE_EPOCH_KEYS["iterations"])
    schedule = stage.schedule
    schedule.warmup_epochs = _scale(schedule.warmup_epochs, factor, STAGE_EPOCH_KEYS["warmup_epochs"])
    # rounding may push a decay onto the last epoch or merge two: keep them inside the stage
    milestones = {_scale(m, factor, STAGE_EPOCH_KEYS["milestones"]) for m in schedule.milestones}
    kept = milestones if stage.iterations else {min(m, stage.epochs - 1) for m in milestones}
    schedule.milestones = sorted(m for m in kept if m > 0)
    stage.loss, stage.sampler, stage.options = (_walk(stage.loss, factor), _walk(stage.sampler, factor),
                                                _walk(stage.options, factor))
    if stage.mixing is not None:
        stage.mixing = _walk(stage.mixing, factor)


def apply_epoch_scale(config: RunConfig) -> None:
    """Apply ``config.epoch_scale`` in place (see the module docstring); a no-op at 1."""
    factor = config.epoch_scale
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise ConfigError(f"epoch_scale must be a positive number (e.g. 0.1: 200 epochs -> 20), got {factor!r}")
    if factor == 1:
        return
    for stage in config.stages:
        if stage.train == "all":
            scale_stage(stage, factor)
    config.engine.checkpoint_every = _scale(config.engine.checkpoint_every, factor, 1)  # 0 (off) stays 0
    config.eval.every = _scale(config.eval.every, factor, 1)
    config.scaled_by *= factor
    config.epoch_scale = 1.0
