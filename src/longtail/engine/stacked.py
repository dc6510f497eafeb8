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
all of them in one step.

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

import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import RunConfig, to_dict
from ..data.factory import DATASETS
from ..data.mixing import mixed_loss
from ..data.sampling import build_sampler
from ..errors import ConfigError
from ..models.stacked import StackedEncoder, stack_refusal as encoder_refusal
from .concurrency import DEVICE_RNG_LOCK
from .rng import RunRNG
from .device import Runtime
from .runner import Run
from .schedules import SCHEDULES
from .sources import DeviceSource
from .stages import (RunContext, SupervisedStage, _augment, _mixer, build_stage_loss, max_norm_cap, stage_epochs,
                     stage_kind)
from .trainer import DEFAULT_DIVERGENCE_FACTOR, DivergenceCheck, StepLoop, build_param_groups, nonfinite_count

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


# ---------------------------------------------------------------------------- one member's part
@dataclass
class Member:
    """What a member contributes to a stacked stage: its data, head, loss and generators."""

    name: str
    source: DeviceSource
    head: nn.Module
    loss_fn: nn.Module
    rng: RunRNG
    mixer: Callable | None = None
    offset: torch.Tensor | None = None
    post_step: list[Callable[[], None]] = field(default_factory=list)
    check: DivergenceCheck | None = None  # set by the trainer


def member_part(ctx: RunContext, index: int, name: str) -> Member:
    """The member's part of its supervised stage ``index``, built as :meth:`SupervisedStage.build`
    builds the run's own (same loss, mixing, sampler, data source, MaxNorm, drawing from ``ctx.rng``)."""
    runtime = ctx.runtime
    kind, stage = ctx.kinds[index], ctx.config.stages[index]
    loss_fn = build_stage_loss(ctx, stage.loss)
    mixer = _mixer(ctx, stage.mixing, ctx.rng.torch)
    strategy = build_sampler(stage.sampler["name"], **{k: v for k, v in stage.sampler.items() if k != "name"})
    cached = stage.train == "head"
    inputs, labels = kind.training_data(ctx, stage, cached)
    offset = kind.logit_offset(ctx, stage)
    source = DeviceSource(
        inputs, labels, ctx.dataset.num_classes, strategy, stage.batch_size, stage_epochs(stage, len(labels)),
        augment=None if cached else _augment(stage.augment, runtime.device, ctx.rng.torch),
        mean=ctx.dataset.mean, std=ctx.dataset.std, channels_last=runtime.channels_last, world=runtime.world,
        generator=ctx.rng.torch,
    )
    post_step = []
    head = ctx.model.head
    if stage.max_norm is not None:
        weight = head.class_weight()
        cap = max_norm_cap(kind.state, weight, stage.max_norm)
        post_step.append(lambda: cap.apply_(weight))
    return Member(name, source, head, loss_fn, ctx.rng, mixer, offset, post_step)


# ---------------------------------------------------------------------------- the trainer
@dataclass
class StackedPlan:
    name: str
    epochs: int
    members: list[Member]
    encoder: StackedEncoder | None  # None: the members' inputs are cached features
    optimizer: Any
    schedule: Any
    max_steps: int = 0
    compiled: bool = False


class StackedTrainer(StepLoop):
    """Runs the epochs of a :class:`StackedPlan`: :class:`~longtail.engine.trainer.StageTrainer`'s
    loop (device-side lr table, fused SGD on CUDA, one CUDA graph for the whole step, one host sync
    per epoch) for K members at once; metrics come back per member."""

    label = "stacked stage"

    def __init__(self, plan: StackedPlan, runtime: Runtime, progress: bool = True,
                 divergence_factor: float | None = DEFAULT_DIVERGENCE_FACTOR, stage_index: int | None = None):
        self.plan, self.runtime, self.progress = plan, runtime, progress
        members = plan.members
        self.k = len(members)
        steps = {m.source.steps_per_epoch for m in members}
        batches = {m.source.batch_size for m in members}
        if len(steps) != 1 or len(batches) != 1:
            raise ConfigError(f"stacked members need the same steps per epoch and batch size, got {steps} and {batches}")
        self.steps = steps.pop()
        self.encoder = plan.encoder
        self.trained_encoder = runtime.compiled(plan.encoder) if plan.encoder is not None else None
        named = []
        if plan.encoder is not None:
            named += [(f"encoder.{n}", p) for n, p in plan.encoder.net.named_parameters() if p.requires_grad]
        prefix = "head." if plan.encoder is not None else ""  # the solo run's names (model or head)
        for m in members:
            named += [(f"{prefix}{n}", p) for n, p in m.head.named_parameters() if p.requires_grad]
        self.named_params = named
        self._init_loop(named, plan.optimizer, plan.schedule, self.steps, (self.k, 2),
                        [g for m in members for g in m.rng.graph_generators()])
        where = f"stages.{stage_index}" if stage_index is not None else "stages.N"
        for m in members:
            m.check = DivergenceCheck(f"{plan.name} ({m.name})", divergence_factor, where, plan.optimizer.lr)

    # ------------------------------------------------------------------ the step
    def _step(self) -> None:
        members = self.plan.members
        batches = [m.source.next() for m in members]
        with self.runtime.autocast():
            inputs, mixed = [], []
            for m, (x, y) in zip(members, batches):
                batch = None
                if m.mixer is not None:
                    batch = m.mixer(x, y)
                    x = batch.x
                inputs.append(x)
                mixed.append(batch)
            if self.trained_encoder is not None:
                x = torch.cat(inputs, 1)
                if self.runtime.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                feats = self.trained_encoder(x)  # [K, B, D]
            else:
                feats = inputs
            losses, logits_all = [], []
            for k, (m, (_, y), batch) in enumerate(zip(members, batches, mixed)):
                f = feats[k]
                logits = m.head(f)
                if m.offset is not None:
                    logits = logits + m.offset
                if batch is not None:
                    loss = mixed_loss(m.loss_fn, logits, batch)
                elif getattr(m.loss_fn, "uses_features", False):
                    loss = m.loss_fn(logits, y, features=f)
                else:
                    loss = m.loss_fn(logits, y)
                losses.append(loss)
                logits_all.append(logits)
            total = torch.stack([loss.float() for loss in losses]).sum()
        total.backward()
        self._optimizer_step()
        for m in members:
            for constraint in m.post_step:
                constraint()
        stats = [torch.stack([loss.detach().float(), (logits.detach().argmax(1) == y).sum().float()])
                 for loss, logits, (_, y) in zip(losses, logits_all, batches)]
        self.totals.add_(torch.stack(stats))

    def _use_graph(self) -> bool:
        if not self.runtime.cuda_graph:
            return False
        for m in self.plan.members:
            if not getattr(m.loss_fn, "graph_safe", True):
                self.fallback_reason = f"member {m.name}: its loss is not CUDA-graph safe"
                return False
        return True

    # ------------------------------------------------------------------ epochs
    def set_modes(self) -> None:
        if self.encoder is not None:
            self.encoder.train()
        for m in self.plan.members:
            m.head.train()

    def run_epoch(self, epoch: int) -> list[dict[str, float]]:
        plan = self.plan
        self.set_modes()
        for m in plan.members:
            m.loss_fn.on_epoch_start(epoch, plan.epochs)
            if getattr(m.loss_fn, "loss_changes_at", lambda _: False)(epoch):
                m.check.restart()
            m.source.start_epoch(epoch)
        self.step_index.fill_(epoch * self.steps)
        self.totals.zero_()
        last = self._train_steps(epoch, self.steps)
        for m in plan.members:
            m.loss_fn.on_epoch_end()
        bad = nonfinite_count([p for _, p in self.named_params], self.totals)
        stats = torch.cat([self.totals.flatten(), bad]).tolist()  # one sync
        lr = float(self.optimizer.param_groups[0]["lr"])
        seen = last * plan.members[0].source.batch_size
        out = []
        for k, m in enumerate(plan.members):
            loss_sum, correct = stats[2 * k], stats[2 * k + 1]
            bad_weights = int(self._bad_weights(k)) if stats[-1] else 0
            m.check(epoch, loss_sum / last, bad_weights)
            out.append({"loss": loss_sum / last, "train_acc": 100.0 * correct / seen, "lr": lr})
        return out

    def _bad_weights(self, k: int) -> int:
        """How many of member ``k``'s weight tensors hold NaN or inf (after a failed epoch only)."""
        count = 0
        if self.encoder is not None:
            for p in self.encoder.net.parameters():
                count += int(not torch.isfinite(p.detach().chunk(self.k, 0)[k]).all())
        for p in self.plan.members[k].head.parameters():
            count += int(not torch.isfinite(p.detach()).all())
        return count

    def member_state_dict(self, k: int, named: list[tuple[str, nn.Parameter]]) -> dict[str, Any]:
        """Member ``k``'s trainer state as :meth:`StageTrainer.state_dict` writes it for the run alone
        (``named``: the parameters that run trains, its names and order), so the run resumes alone."""
        m = self.plan.members[k]
        stacked = dict(self.encoder.net.named_parameters()) if self.encoder is not None else {}
        groups = build_param_groups(named, self.plan.optimizer)
        for group, own in zip(groups, self.optimizer.param_groups):
            group["lr"] = float(own["lr"])
        solo = torch.optim.SGD(groups, lr=self.plan.optimizer.lr, momentum=self.plan.optimizer.momentum,
                               nesterov=self.plan.optimizer.nesterov, weight_decay=self.plan.optimizer.weight_decay)
        for name, param in named:
            if self.encoder is not None and name.startswith("encoder."):
                source, chunk = stacked[name[len("encoder."):]], True
            else:
                source, chunk = param, False
            buffer = self.optimizer.state.get(source, {}).get("momentum_buffer")
            if buffer is not None:
                solo.state[param] = {"momentum_buffer": (buffer.chunk(self.k, 0)[k] if chunk else buffer).clone()}
        state = solo.state_dict()
        for group in state["param_groups"]:
            group["lr"] = float(group["lr"])
            group["fused"] = self.optimizer.defaults.get("fused")
        out = {"optimizer": state, "hooks": [m.loss_fn.state_dict()] if isinstance(m.loss_fn, nn.Module) else []}
        out["divergence"] = m.check.state_dict()
        return out

    def fit(self, start_epoch: int = 0,
            on_epoch_end: Callable[[int, list[dict[str, float]]], None] | None = None) -> list[list[dict[str, float]]]:
        history = []
        bar = tqdm(range(start_epoch, self.plan.epochs), desc=f"{self.plan.name} x{self.k}", unit="ep",
                   disable=not self.progress, dynamic_ncols=True)
        for epoch in bar:
            start = time.perf_counter()
            metrics = self.run_epoch(epoch)
            seconds = time.perf_counter() - start
            for record in metrics:
                record["seconds"] = seconds
                record["epoch"] = epoch + 1
            history.append(metrics)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        return history


# ---------------------------------------------------------------------------- stacked runs
class _MemberTrainerState:
    """What :meth:`RunFolder.save` asks of a trainer: its ``state_dict()``."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


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
        started = time.perf_counter()
        try:
            return self._stack(runs, started)
        finally:
            for run in runs:
                run.folder.close()

    def _stack(self, runs: list[Run], started: float) -> list[dict[str, Any]]:
        runtime = runs[0].runtime
        names = [f"{r.config.name}/seed{r.config.seed}" for r in runs]
        ctxs = []
        for run in runs:
            ctxs.append(run.build())  # its generators and model, as alone
            run.start_clock(started)
        for ctx in ctxs:
            reason = encoder_refusal(ctx.model.encoder)
            if reason:
                raise ConfigError(f"run {ctx.config.name!r} cannot be stacked: {reason}")
        kinds = [ctx.kinds for ctx in ctxs]
        for run, ctx, run_kinds in zip(runs, ctxs, kinds):
            for kind, stage in zip(run_kinds, run.config.stages):
                kind.check(ctx, stage)
        for run in runs:
            run.folder.open(None)  # only now, with every member built and checked
        timings: list[list[dict[str, Any]]] = [[] for _ in runs]
        best_val: list[tuple[float, dict[str, torch.Tensor]] | None] = [None] * len(runs)
        last_training = [max((i for i, k in enumerate(rk) if k.trains), default=-1) for rk in kinds]
        info = lambda k: {"members": len(runs), "member": k, "runs": names}  # noqa: E731
        for index in range(len(runs[0].config.stages)):
            stages = [run.config.stages[index] for run in runs]
            for ctx, run_kinds, stage in zip(ctxs, kinds, stages):
                with ctx.rng.initialising():  # a new head's weights, as alone
                    run_kinds[index].prepare(ctx, stage)
            if stages[0].init_from:
                for k, (run, ctx, stage) in enumerate(zip(runs, ctxs, stages)):
                    run.init_from(ctx, stage.init_from)
                    timings[k].append({"stage": stage.name, "seconds": 0.0, "init_from": stage.init_from})
                    run.folder.finish_stage(ctx, index, stage)
                continue
            if not kinds[0][index].trains:  # post-hoc: each member alone
                for k, (run, ctx, stage) in enumerate(zip(runs, ctxs, stages)):
                    start = time.perf_counter()
                    kinds[k][index].build(ctx, stage)
                    timings[k].append({"stage": stage.name, "seconds": time.perf_counter() - start, "compile_seconds": 0.0,
                                       "cuda_graph": False, "fallback_reason": "", "steps_per_epoch": 0, "batch_size": 0})
                    run.folder.save(ctx, index, stage.epochs, None)  # post-hoc: its epochs are not used
                    run.folder.finish_stage(ctx, index, stage)
                continue
            stage_start = time.perf_counter()
            members = [member_part(ctx, index, name) for ctx, name in zip(ctxs, names)]
            whole = stages[0].train != "head"
            encoder = None
            if whole:  # its own initialisation (overwritten by the members' weights) leaves the global RNG as it was
                with DEVICE_RNG_LOCK, torch.random.fork_rng(devices=[]):
                    encoder = StackedEncoder([ctx.model.encoder for ctx in ctxs])
            epochs = stage_epochs(stages[0], len(members[0].source.labels))
            plan = StackedPlan(stages[0].name, epochs, members, encoder, stages[0].optimizer,
                               stages[0].schedule, stages[0].iterations)
            plan.compiled = whole and runtime.compile
            trainer = StackedTrainer(plan, runtime, progress=runs[0].config.engine.progress,
                                     divergence_factor=runs[0].config.engine.divergence_factor,
                                     stage_index=index)

            def sync() -> None:
                if encoder is not None:
                    for k, ctx in enumerate(ctxs):
                        encoder.load_member(k, ctx.model.encoder)

            def on_epoch_end(epoch: int, metrics: list[dict[str, float]], _index=index, _stages=stages) -> None:
                synced = False
                for k, (run, ctx) in enumerate(zip(runs, ctxs)):
                    config = run.config
                    record = {"stage": _stages[k].name, **metrics[k]}
                    wants_test = config.eval.every and (epoch + 1) % config.eval.every == 0
                    wants_val = config.eval.select == "best_val" and _index == last_training[k]
                    if (wants_test or wants_val) and not synced:
                        sync()
                        synced = True
                    if wants_test:
                        record["test_top1"] = run.evaluate(ctx, "test").top1
                    if wants_val:
                        val_top1 = run.evaluate(ctx, "val").top1
                        record["val_top1"] = val_top1
                        if best_val[k] is None or val_top1 > best_val[k][0]:
                            best_val[k] = (val_top1, copy.deepcopy(ctx.model.state_dict()))
                    run.folder.log(record)
                    every = config.engine.checkpoint_every
                    if every and (epoch + 1) % every == 0 and epoch + 1 < epochs:
                        if not synced:
                            sync()
                            synced = True
                        trained = ctx.model if encoder is not None else ctx.model.head
                        named = [(n, p) for n, p in trained.named_parameters() if p.requires_grad]
                        state = _MemberTrainerState(trainer.member_state_dict(k, named))
                        run.folder.save(ctx, _index, epoch + 1, state)

            trainer.fit(0, on_epoch_end)
            sync()
            seconds = time.perf_counter() - stage_start
            for k, (run, ctx, stage) in enumerate(zip(runs, ctxs, stages)):
                timings[k].append({
                    "stage": stage.name, "seconds": seconds, "compile_seconds": trainer.compile_seconds,
                    "cuda_graph": trainer.graph is not None, "fallback_reason": trainer.fallback_reason,
                    "steps_per_epoch": trainer.steps, "batch_size": members[k].source.batch_size, "stacked": info(k),
                })
                run.folder.save(ctx, index, epochs, None)
                run.folder.finish_stage(ctx, index, stage)
        out = []
        for k, (run, ctx) in enumerate(zip(runs, ctxs)):
            if best_val[k] is not None:
                ctx.model.load_state_dict(best_val[k][1])
            results = run.results(ctx, timings[k], run.elapsed_seconds())
            results["stacked"] = info(k)
            run.folder.write_results(results)
            out.append(results)
        return out


def run_stacked(configs: list[RunConfig], command: str | None = None, fresh: bool = False) -> list[dict[str, Any]]:
    """Train ``configs`` as one stack (:class:`StackedRun`); their results dicts, in order."""
    return StackedRun(configs, command=command, fresh=fresh).execute()
