"""Stacked training: K independent runs trained as one network, each writing its own run folder.

K runs that share the data, the encoder architecture, and every training stage's kind, epochs,
batch size, optimizer and schedule may differ in seed, loss, sampler, augmentation, mixing, head
and post-hoc stages (seeds of one method, and methods that differ only there). They train as one
:class:`~longtail.models.stacked.StackedEncoder` (convolutions with ``groups=K``) with one head,
one loss (with its own state: DRW weights, GHM statistics, Seesaw counts), one
:class:`DeviceSource` (its own sampler and data order) and its own generators per member; one SGD
over the stacked tensors is K optimizers (SGD acts element by element). A step gathers every
member's batch, runs the stacked encoder once on the batches side by side along the channels,
each member's head and loss on its own features, and steps on the sum of the members' losses (so
each member gets its own gradient); on CUDA that whole step is captured in one CUDA graph.
Stage 2 on cached features stacks the same way: each member's head on its own cached features,
all of them in one step. The training is the ordinary run's code (:class:`~longtail.engine.runner.
StageLoop` with K runs, one :class:`~longtail.engine.trainer.Trainer` of K members); this module
decides which runs stack.

Each member is an ordinary :class:`~longtail.engine.runner.Run` (its own config, run folder,
``metrics.jsonl``, stage weights, ``results.json``, plots, evaluation code): its encoder is set
up with its own seed as alone, copied into the stack before a whole-network stage and back after
it (and before any evaluation between epochs).

Random numbers. Each member draws from its own generators (``ctx.rng``, made by its
:meth:`Run.build` from its seed, as alone): data order, augmentation, mixing and losses from its
device generator (registered with the stack's CUDA graph), head initialisation of a later stage
seeded from its CPU stream. Member k therefore draws exactly the numbers the run alone draws, so
on deterministic CPU kernels a member equals the run trained alone up to the float rounding of
the grouped convolution (``tests/test_stacked.py`` states the tolerance).

Not covered (``stack_refusal`` says so, and ``longtail bench reproduce --stack`` runs such runs
alone): method-specific stage kinds (GLAG, LADC, BWLM), classifier stages on online features
(``features: online``, ``shift_bn``), images streamed from disk, encoders other than the CIFAR and
torchvision ResNets, and data parallelism.

Checkpoints and resuming: every ``engine.checkpoint_every`` epochs and at the end of each stage,
each member writes its own ``checkpoint.pt`` as the run alone would (its weights, its optimizer
state sliced out of the stack in the solo run's layout, its loss state, divergence level and
generators). A run with a ``checkpoint.pt`` resumes alone (an interrupted stack resumes as K
single runs); on the CPU it then continues exactly as the run alone would have.
"""
from __future__ import annotations

import json
import time
from typing import Any

from ..config import RunConfig, to_dict
from ..data.factory import DATASETS
from ..errors import ConfigError
from .runner import Run, StageLoop
from .schedules import SCHEDULES
from .stages import SupervisedStage, stage_kind

STACKABLE_ENCODERS = (
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet32x8",
    "resnet10", "resnet50", "resnet152", "resnext50_32x4d", "resnet34_cifar_stem",
)


# ---------------------------------------------------------------------------- compatibility
def _schedule_key(schedule) -> dict[str, Any]:
    key = to_dict(schedule)
    for name in SCHEDULES.get(schedule.name).ignored_keys(schedule):  # keys that have no effect
        key.pop(name)
    return key


def _kind_class(name: str):
    try:
        return type(stage_kind(name))
    except (KeyError, ConfigError):
        return None


def stack_refusal(config: RunConfig) -> str:
    """Why ``config`` cannot train in a stack ('' when it can); see the module docstring."""
    if config.model.encoder not in STACKABLE_ENCODERS:
        return f"encoder {config.model.encoder!r} is not stackable (stackable: {', '.join(STACKABLE_ENCODERS)})"
    items = DATASETS.get(config.data.dataset).items if config.data.dataset in DATASETS else "images"
    if items == "streamed":
        return f"data.dataset {config.data.dataset!r} streams its images from disk"
    if items == "features":
        return f"data.dataset {config.data.dataset!r} gives feature vectors: the encoder is the identity (nothing to stack)"
    for index, stage in enumerate(config.stages):
        kind = _kind_class(stage.kind)
        if kind is None:
            return f"stage {index} has an unknown kind {stage.kind!r}"
        if stage.init_from or not kind.trains:
            continue
        if kind is not SupervisedStage:
            return f"stage {index} ({stage.name!r}) is of kind {stage.kind!r}, which trains with its own code"
        if stage.train == "head" and stage.features != "cached":
            return f"stage {index} ({stage.name!r}) trains a classifier on online features"
        if stage.shift_bn:
            return f"stage {index} ({stage.name!r}) re-estimates BatchNorm statistics (shift_bn)"
    return ""


def stack_key(config: RunConfig) -> str:
    """Runs with equal keys (and no :func:`stack_refusal`) can train in one stack."""
    engine = to_dict(config.engine)
    engine.pop("progress")
    stages = []
    for stage in config.stages:
        kind = _kind_class(stage.kind)
        init_from = bool(stage.init_from)
        if init_from or (kind is not None and not kind.trains):
            stages.append({"kind": stage.kind, "init_from": init_from})
            continue
        stages.append({
            "kind": stage.kind, "train": stage.train, "features": stage.features if stage.train == "head" else None,
            "epochs": stage.epochs, "iterations": stage.iterations, "batch_size": stage.batch_size,
            "optimizer": to_dict(stage.optimizer), "schedule": _schedule_key(stage.schedule),
        })
    data = {"prepared": config.data.prepared} if config.data.prepared else to_dict(config.data)
    blob = {"data": data, "encoder": config.model.encoder, "pretrained": config.model.pretrained,
            "engine": engine, "stages": stages}
    return json.dumps(blob, sort_keys=True, default=str)


def check_stackable(configs: list[RunConfig]) -> None:
    """Raise a ConfigError naming the first run that cannot join the stack, and why."""
    for config in configs:
        reason = stack_refusal(config)
        if reason:
            raise ConfigError(f"run {config.name!r} seed {config.seed} cannot be stacked: {reason}")
    first = stack_key(configs[0])
    for config in configs[1:]:
        if stack_key(config) != first:
            raise ConfigError(
                f"run {config.name!r} seed {config.seed} cannot share a stack with {configs[0].name!r} seed "
                f"{configs[0].seed}: stacked runs need the same data, encoder, engine settings and, per training "
                "stage, the same kind, epochs, iterations, batch size, optimizer and schedule"
            )


def group_for_stacking(configs: list[RunConfig], k: int) -> tuple[list[list[int]], dict[int, str]]:
    """Indices of ``configs`` in stacks of at most ``k`` compatible runs, and the runs left alone
    with the reason (unstackable, or no compatible partner)."""
    alone: dict[int, str] = {}
    by_key: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        reason = stack_refusal(config)
        if reason:
            alone[i] = reason
        else:
            by_key.setdefault(stack_key(config), []).append(i)
    stacks = []
    for members in by_key.values():
        for start in range(0, len(members), k):
            chunk = members[start:start + k]
            if len(chunk) == 1:
                alone[chunk[0]] = "no compatible run to stack with (same data, encoder, engine and training schedule)"
            else:
                stacks.append(chunk)
    return stacks, alone


# ---------------------------------------------------------------------------- stacked runs
class StackedRun:
    """K runs trained as one stack; ``execute()`` returns their results dicts, in order.

    Finished runs (``results.json``) are read back; runs with a ``checkpoint.pt`` to resume from are
    run alone (and so is a stack left with one member)."""

    def __init__(self, configs: list[RunConfig], command: str | None = None, fresh: bool = False):
        check_stackable(configs)
        self.configs = configs
        self.runs = [Run(c, command=command, fresh=fresh) for c in configs]
        if self.runs[0].runtime.world.size > 1:
            raise ConfigError("stacked runs train on one device; run data-parallel runs alone")
        self.alone: dict[int, str] = {}

    def execute(self) -> list[dict[str, Any]]:
        results: dict[int, dict[str, Any]] = {}
        pending = []
        for i, run in enumerate(self.runs):
            finished = run.folder.finished_results()  # a folder of another config is refused here
            if finished is not None:
                results[i] = finished
            elif not run.fresh and (run.run_dir / "checkpoint.pt").exists():
                self.alone[i] = "resumes from its checkpoint alone"
            else:
                pending.append(i)
        if len(pending) == 1:
            self.alone[pending[0]] = "the only unfinished run of its stack"
            pending = []
        for i in self.alone:
            results[i] = self.runs[i].execute()
        if pending:
            for i, result in zip(pending, self._train([self.runs[i] for i in pending])):
                results[i] = result
        return [results[i] for i in range(len(self.runs))]

    def _train(self, runs: list[Run]) -> list[dict[str, Any]]:
        try:
            return StageLoop(runs).execute(time.perf_counter())
        finally:
            for run in runs:
                run.folder.close()


def run_stacked(configs: list[RunConfig], command: str | None = None, fresh: bool = False) -> list[dict[str, Any]]:
    """Train ``configs`` as one stack (:class:`StackedRun`); their results dicts, in order."""
    return StackedRun(configs, command=command, fresh=fresh).execute()
