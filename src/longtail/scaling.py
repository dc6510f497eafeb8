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
}
"""Epoch-valued fields of a stage and its schedule, with the least value a non-zero entry may be scaled to."""

NOT_EPOCH_VALUED = {"resample_each_epoch"}
"""Stage keys whose names mention epochs but hold no epoch count (a switch)."""


def _scale(value: int, factor: float, least: int) -> int:
    if value == 0:
        return 0
    return max(least, math.floor(value * factor + 0.5))


def _scale_keys(mapping: dict[str, Any] | None, keys: tuple[str, ...], factor: float) -> dict[str, Any] | None:
    """``mapping`` with the integer values of ``keys`` scaled (a list of them item by item)."""
    if not mapping:
        return mapping
    out = dict(mapping)
    for key in keys:
        value = out.get(key)
        if isinstance(value, list):
            out[key] = [_scale(v, factor, 0) for v in value]
        elif isinstance(value, int) and not isinstance(value, bool):
            out[key] = _scale(value, factor, 0)
    return out


def declared_epoch_keys(stage: StageConfig) -> dict[str, tuple[str, ...]]:
    """The epoch-valued keys each mapping of ``stage`` declares: ``{"loss": ..., "sampler": ...,
    "options": ...}`` (an unknown name declares none; validation reports it later)."""
    from . import methods  # noqa: F401  (registers the method-specific stage kinds before they are read)
    from .data.sampling import SAMPLERS
    from .engine.stages import STAGE_KINDS
    from .losses import LOSSES

    def declared(registry, name, read):
        return read(registry.get(name)) if isinstance(name, str) and name in registry else ()

    return {
        "loss": declared(LOSSES, stage.loss.get("name"), lambda cls: cls.epoch_params_of(stage.loss)),
        "sampler": declared(SAMPLERS, stage.sampler.get("name"), lambda cls: cls.epoch_params),
        "options": declared(STAGE_KINDS, stage.kind, lambda cls: cls.epoch_options),
    }


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
    keys = declared_epoch_keys(stage)
    stage.loss = _scale_keys(stage.loss, keys["loss"], factor)
    stage.sampler = _scale_keys(stage.sampler, keys["sampler"], factor)
    stage.options = _scale_keys(stage.options, keys["options"], factor)


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
