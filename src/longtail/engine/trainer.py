"""The training loop of one stage, written once for the CPU and the CUDA fast path, for one run
or a stack of K runs (:class:`StagePlan`'s members).

One training step = gather a batch on the device, augment it, forward under bf16 autocast,
backward, set the learning rate from a device-side table, fused SGD step, post-step
constraints (e.g. MaxNorm), and accumulate loss/accuracy in device tensors. Nothing in the step
reads a value back to the host, so on CUDA the step is captured once in a CUDA graph and
replayed; the host synchronises once per epoch (to log the epoch's loss and check it,
:class:`DivergenceCheck`). On the CPU, or when a stage cannot be captured, the identical step
runs eagerly.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import OptimizerConfig, ScheduleConfig
from ..errors import ConfigError, TrainingError
from ..models.stacked import StackedEncoder
from .concurrency import DEVICE_RNG_LOCK
from .device import Runtime
from .distributed import broadcast_buffers_, data_parallel, sum_
from .schedules import factor_table
from .sources import DeviceSource

LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
HeadLossFn = Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Member:
    """What one run trains in a stage: its data, parameters, loss, hooks, constraints and generators.

    With a shared encoder (a :class:`~longtail.models.stacked.StackedEncoder` in the plan) the
    trainer runs ``mixer`` (None: no mixing), the shared encoder, then ``head_loss``; otherwise
    ``compute_loss``."""

    source: DeviceSource
    named_params: list[tuple[str, nn.Parameter]]
    compute_loss: LossFn  # (inputs, labels) -> (loss, logits); graph-safe
    train_modules: list[nn.Module]  # put in train() mode for the stage
    frozen_modules: list[nn.Module] = field(default_factory=list)  # put in eval() mode
    hooks: list[Any] = field(default_factory=list)  # objects with on_epoch_start / on_epoch_end
    post_step: list[Callable[[], None]] = field(default_factory=list)
    generators: Sequence[torch.Generator] = ()  # the CUDA generators the step draws from (RunRNG.graph_generators)
    graph_safe: bool = True
    graph_unsafe_reason: str = ""
    mixer: Callable | None = None  # (inputs, labels) -> MixedBatch, before a shared encoder
    head_loss: HeadLossFn | None = None  # (features, labels, MixedBatch | None) -> (loss, logits), after it
    name: str = ""  # names the member's run in messages (a stack's members)


@dataclass
class StagePlan:
    """Everything one stage needs: its members (one per run), schedule, and the encoder they share
    (None: each member trains its own parameters only)."""

    name: str
    epochs: int
    members: list[Member]
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    max_steps: int = 0  # > 0: stop after this many steps (iteration-based stages); the last epoch is partial
    compiled: bool = False  # the step calls torch.compile'd code (compiled in the stage's first step)
    encoder: StackedEncoder | None = None  # the members' encoders as one grouped network


def build_param_groups(named_params, config: OptimizerConfig) -> list[dict[str, Any]]:
    """Split parameters into groups by name substring (``optimizer.param_groups``)."""
    groups: dict[str, dict[str, Any]] = {}
    for name, param in named_params:
        key = next((k for k in config.param_groups if k in name), "")
        if key not in groups:
            override = config.param_groups.get(key, {})
            groups[key] = {
                "params": [],
                "base_lr": float(override.get("lr", config.lr)),
                "weight_decay": float(override.get("weight_decay", config.weight_decay)),
            }
        groups[key]["params"].append(param)
    return list(groups.values())


DEFAULT_DIVERGENCE_FACTOR = 100.0


class DivergenceCheck:
    """Stops a stage whose training has failed, before its epoch is logged or checkpointed.

    After each epoch: the loss must be finite, and so must the trained weights; and (with
    ``factor``, ``engine.divergence_factor``; 0 or None: off) the epoch's mean loss must not be
    more than ``factor`` x the running level, the lowest epoch loss since the level was last
    set, while also above the first epoch's loss of that span (so a loss that fell near zero may
    wobble). The level restarts with each stage (a new check), and at epochs where the loss itself
    changes (a hook's ``loss_changes_at(epoch)``, e.g. DRW switching on its weights).
    """

    def __init__(self, stage: str, factor: float | None, where: str, lr: float):
        self.stage, self.factor, self.where, self.lr = stage, factor or 0.0, where, lr
        self.lowest: float | None = None
        self.first: float | None = None
        self.since = 0  # 1-based epoch the running level starts from

    def restart(self) -> None:
        self.lowest = self.first = None

    def __call__(self, epoch: int, loss: float, bad_weights: int) -> None:
        where = f"stage {self.stage!r}, epoch {epoch + 1}"
        fix = (f"Lower the learning rate (e.g. {self.where}.optimizer.lr={self.lr / 10:g}; it is {self.lr:g}) and "
               "train again with --fresh or a new name= (another config), or check the loss options.")
        if not math.isfinite(loss):
            raise TrainingError(f"{where}: the training loss is not finite ({loss}). {fix}")
        if bad_weights:
            raise TrainingError(f"{where}: {bad_weights} trained weight tensor(s) hold NaN or inf values. {fix}")
        if self.first is None:
            self.first, self.lowest, self.since = loss, loss, epoch + 1
            return
        level = self.lowest
        if self.factor and level > 0 and loss > self.factor * level and loss > self.first:
            raise TrainingError(
                f"{where}: the training loss diverged: {loss:.4g} is {loss / level:.3g}x its running level {level:.4g} "
                f"(the lowest epoch loss since epoch {self.since}; engine.divergence_factor={self.factor:g}). {fix} "
                "If the jump is expected, raise engine.divergence_factor or set it to 0 (off)."
            )
        self.lowest = min(level, loss)

    def state_dict(self) -> dict[str, Any]:
        return {"lowest": self.lowest, "first": self.first, "since": self.since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lowest, self.first, self.since = state["lowest"], state["first"], state["since"]


def nonfinite_count(params: list[nn.Parameter], like: torch.Tensor) -> torch.Tensor:
    """How many of ``params`` hold NaN or inf, as a 1-element tensor of ``like``'s dtype and device."""
    if not params:
        return like.new_zeros(1)
    return torch.stack([~torch.isfinite(p.detach()).all() for p in params]).sum().to(like.dtype).view(1)


class Trainer:
    """Runs the epochs of a :class:`StagePlan` for its K members: SGD with device-side lr tables,
    the first steps (torch.compile, CUDA-graph capture or eager fallback), then graph-or-eager
    steps, one host sync per epoch. K = 1 is one run's stage (under ``torchrun`` through DDP);
    K > 1 a stack, stepping on the sum of the members' losses (each gets its own gradient).
    ``stage_index`` names the stage in messages; metrics come back per member."""

    def __init__(self, plan: StagePlan, runtime: Runtime, progress: bool = True,
                 divergence_factor: float | None = DEFAULT_DIVERGENCE_FACTOR, stage_index: int | None = None):
        self.plan, self.runtime, self.progress = plan, runtime, progress
        members = plan.members
        self.k = len(members)
        steps = {m.source.steps_per_epoch for m in members}
        batches = {m.source.batch_size for m in members}
        if len(steps) != 1 or len(batches) != 1:
            raise ConfigError(f"stacked members need the same steps per epoch and batch size, got {steps} and "
                              f"{batches}")
        self.steps = steps.pop()
        self.label = "stage" if self.k == 1 else "stacked stage"  # names the trainer in warnings and errors
        self.encoder = plan.encoder
        self.trained_encoder = runtime.compiled(plan.encoder) if plan.encoder is not None else None
        shared = plan.encoder is not None
        # each member's own trained parameters (with a shared encoder: not its encoder, the stack's is trained)
        own = [[(n, p) for n, p in m.named_params if not (shared and n.startswith("encoder."))] for m in members]
        self.own_params = [[p for _, p in pairs] for pairs in own]
        self.named_params = [(f"encoder.{n}", p) for n, p in plan.encoder.net.named_parameters()
                             if p.requires_grad] if shared else []
        self.named_params += [pair for pairs in own for pair in pairs]
        where = f"stages.{stage_index}" if stage_index is not None else "stages.N"
        self.checks = [DivergenceCheck(f"{plan.name} ({m.name})" if m.name else plan.name, divergence_factor, where,
                                       plan.optimizer.lr) for m in members]
        # the CUDA generators the step draws from: a CUDA graph must know of them to advance them on each replay
        self.generators = [g for m in members for g in m.generators]
        self.optimizer, self.lr_tables = self._optimizer()
        device = runtime.device
        self.step_index = torch.zeros(1, dtype=torch.long, device=device)
        self.totals = torch.zeros(self.k, 2, device=device)  # per member: sum of batch losses, correct predictions
        self.graph: torch.cuda.CUDAGraph | None = None
        self.fallback_reason = ""
        self.compile_seconds = 0.0  # one-off: CUDA-graph capture and/or torch.compile
        self._started = False
        self.loss_steps = [m.compute_loss for m in members]
        if runtime.world.size > 1:  # engine/distributed.py; one member, no shared encoder
            if self.k > 1 or shared:
                raise ConfigError(f"stage {plan.name!r}: data parallelism trains one run, not a stack")
            m = members[0]
            self.loss_steps = [data_parallel(m.compute_loss, [p for _, p in m.named_params], m.train_modules,
                                             runtime.device, static=m.graph_safe)]

    def _optimizer(self) -> tuple[torch.optim.SGD, list[torch.Tensor]]:
        """SGD over the trained parameters (fused on CUDA) with a learning rate per group in a device
        tensor, and each group's per-step learning-rate table."""
        device, plan = self.runtime.device, self.plan
        groups = build_param_groups(self.named_params, plan.optimizer)
        tables = []
        for group in groups:
            table = factor_table(plan.schedule, plan.epochs, self.steps, group["base_lr"]) * group["base_lr"]
            tables.append(torch.as_tensor(table, device=device))
            group["lr"] = torch.tensor(float(table[0]), device=device)
        optimizer = torch.optim.SGD(
            groups,
            lr=plan.optimizer.lr,
            momentum=plan.optimizer.momentum,
            nesterov=plan.optimizer.nesterov,
            weight_decay=plan.optimizer.weight_decay,
            fused=device.type == "cuda",
        )
        return optimizer, tables

    # ------------------------------------------------------------------ the step
    def _step(self) -> None:
        members = self.plan.members
        batches = [m.source.next() for m in members]
        with self.runtime.autocast():
            if self.trained_encoder is None:
                outputs = [loss_step(x, y) for loss_step, (x, y) in zip(self.loss_steps, batches)]
            else:
                outputs = self._shared_encoder_step(batches)
            total = outputs[0][0] if self.k == 1 else torch.stack([loss.float() for loss, _ in outputs]).sum()
        total.backward()  # under DDP, also the gradients' average over the ranks
        self._optimizer_step()
        for m in members:
            for constraint in m.post_step:
                constraint()
        stats = [torch.stack([loss.detach().float(), (logits.detach().argmax(1) == y).sum().float()])
                 for (loss, logits), (_, y) in zip(outputs, batches)]
        self.totals.add_(torch.stack(stats))

    def _shared_encoder_step(self, batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every member's (loss, logits): the shared encoder runs once on the (mixed) batches side by
        side along the channels, each member's head and loss on its own features."""
        members = self.plan.members
        mixed = [m.mixer(x, y) if m.mixer is not None else None for m, (x, y) in zip(members, batches)]
        x = torch.cat([x if batch is None else batch.x for (x, _), batch in zip(batches, mixed)], 1)
        if self.runtime.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.trained_encoder(x)  # [K, B, D]
        return [m.head_loss(feats[k], y, batch) for k, (m, (_, y), batch) in enumerate(zip(members, batches, mixed))]

    def _optimizer_step(self) -> None:
        """Set the step's learning rates from the tables, then step (after ``backward``)."""
        for group, table in zip(self.optimizer.param_groups, self.lr_tables):
            group["lr"].copy_(table.index_select(0, self.step_index).view(()))
        self.step_index.add_(1)
        self.optimizer.step()

    def _eager_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._step()

    def _use_graph(self) -> bool:
        if not self.runtime.cuda_graph:
            return False
        if self.runtime.world.size > 1:
            self.fallback_reason = "distributed steps run eagerly (collectives are not captured in the CUDA graph)"
            return False
        for m in self.plan.members:
            if not m.graph_safe:
                reason = m.graph_unsafe_reason or "the stage is marked graph-unsafe"
                self.fallback_reason = f"member {m.name}: {reason}" if m.name else reason
                return False
        return True

    def _compile_error(self, exc: Exception) -> str:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (f"{self.label} {self.plan.name!r}: torch.compile failed ({type(exc).__name__}: {reason}); "
                "run with engine.compile=off. The last checkpoint in the run folder is intact.")

    def _capture(self, warmup: int) -> None:
        """Run ``warmup`` real steps on a side stream, then capture one step in a CUDA graph."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self._eager_step()
        torch.cuda.current_stream().wait_stream(stream)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:  # torch registers only the default CUDA generator itself
            graph.register_generator_state(generator)
        # A capture stream of our own and thread-local error mode let several runs capture and
        # replay concurrently from different threads (``longtail bench reproduce --concurrent``).
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(), capture_error_mode="thread_local"):
            self._step()
        torch.cuda.current_stream().synchronize()
        self.graph = graph

    def _first_steps(self, last: int) -> int:
        """The stage's first steps, which pay the one-off costs (torch.compile, then CUDA-graph
        capture after a few warm-up steps); their time is ``compile_seconds``. Returns how many
        training steps they took."""
        start = time.perf_counter()
        done = 0
        if self.plan.compiled and last > 0:
            try:
                with DEVICE_RNG_LOCK:
                    self._eager_step()  # compiles
            except Exception as exc:  # noqa: BLE001 - any compiler failure gets the same fix
                raise TrainingError(self._compile_error(exc)) from exc
            done = 1
        if done < last and self._use_graph():
            warmup = min(3, last - done)
            try:
                with DEVICE_RNG_LOCK:
                    self._capture(warmup)
            except RuntimeError as exc:  # capture failed: the warm-up steps stand, go on eagerly
                self.graph = None
                self.fallback_reason = f"CUDA graph capture failed: {exc}"
                warnings.warn(f"{self.label} {self.plan.name!r}: {self.fallback_reason}; running eagerly", stacklevel=3)
                self.runtime = dataclasses.replace(self.runtime, cuda_graph=False)
            done += warmup
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize(self.runtime.device)
        self.compile_seconds = time.perf_counter() - start if done else 0.0
        return done

    def _train_steps(self, epoch: int) -> int:
        """Run epoch ``epoch``'s steps, replaying the graph or eagerly; returns how many."""
        max_steps = self.plan.max_steps
        last = self.steps if not max_steps else min(self.steps, max_steps - epoch * self.steps)
        done = self._first_steps(last) if not self._started else 0
        self._started = True
        for _ in range(done, last):
            with DEVICE_RNG_LOCK:
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._eager_step()
        return last

    # ------------------------------------------------------------------ epochs
    def set_modes(self) -> None:
        if self.encoder is not None:
            self.encoder.train()
        for m in self.plan.members:
            for module in m.train_modules:
                module.train()
            for module in m.frozen_modules:
                module.eval()

    def run_epoch(self, epoch: int) -> list[dict[str, float]]:
        """Train one epoch; per member, its mean loss, training accuracy and final learning rate."""
        plan = self.plan
        self.set_modes()
        for m, check in zip(plan.members, self.checks):
            for hook in m.hooks:
                hook.on_epoch_start(epoch, plan.epochs)
                if getattr(hook, "loss_changes_at", lambda _: False)(epoch):
                    check.restart()
            m.source.start_epoch(epoch)
        self.step_index.fill_(epoch * self.steps)
        self.totals.zero_()
        last = self._train_steps(epoch)
        for m in plan.members:
            for hook in m.hooks:
                hook.on_epoch_end()
        world = self.runtime.world
        # rank 0's BatchNorm statistics everywhere
        broadcast_buffers_([module for m in plan.members for module in m.train_modules], world)
        stats = torch.cat([self.totals.flatten(), nonfinite_count([p for _, p in self.named_params], self.totals)])
        *sums, bad = sum_(stats, world).tolist()  # the one host sync of the epoch
        lr = float(self.optimizer.param_groups[0]["lr"])
        out = []
        for k, (m, check) in enumerate(zip(plan.members, self.checks)):
            loss_sum = sums[2 * k] / world.size  # each rank's loss is the mean over its slice of the batch
            seen = last * m.source.batch_size
            check(epoch, loss_sum / last, int(bad) if self.k == 1 or not bad else self._bad_weights(k))
            out.append({"loss": loss_sum / last, "train_acc": 100.0 * sums[2 * k + 1] / seen, "lr": lr})
        return out

    def _bad_weights(self, k: int) -> int:
        """How many of member ``k``'s weight tensors hold NaN or inf (after a failed epoch only)."""
        count = 0
        if self.encoder is not None:
            for p in self.encoder.net.parameters():
                count += int(not torch.isfinite(p.detach().chunk(self.k, 0)[k]).all())
        return count + sum(int(not torch.isfinite(p.detach()).all()) for p in self.own_params[k])

    def fit(
        self,
        start_epoch: int = 0,
        on_epoch_end: Callable[[int, list[dict[str, float]]], None] | None = None,
    ) -> list[list[dict[str, float]]]:
        """Train epochs ``start_epoch .. epochs-1``; ``on_epoch_end(epoch, metrics)`` after each
        (``metrics``: one dict per member)."""
        history = []
        bar = tqdm(
            range(start_epoch, self.plan.epochs),
            desc=self.plan.name if self.k == 1 else f"{self.plan.name} x{self.k}",
            unit="ep",
            disable=not self.progress or not self.runtime.world.main,
            dynamic_ncols=True,
        )
        for epoch in bar:
            start = time.perf_counter()
            metrics = self.run_epoch(epoch)
            seconds = time.perf_counter() - start
            for record in metrics:
                record["seconds"] = seconds
                record["epoch"] = epoch + 1
            first = metrics[0]
            bar.set_postfix(loss=f"{first['loss']:.3f}", acc=f"{first['train_acc']:.1f}", lr=f"{first['lr']:.2g}")
            history.append(metrics)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        return history

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, k: int = 0) -> dict[str, Any]:
        """Member ``k``'s trainer state as the run alone writes it (its optimizer state in the run's
        own parameter layout, its hooks' state, its divergence level), so the run resumes alone."""
        m = self.plan.members[k]
        state = self.optimizer.state_dict() if self.k == 1 and self.encoder is None else self._member_optimizer_state(k)
        for group in state["param_groups"]:
            group["lr"] = float(group["lr"])
        hooks = [h.state_dict() for h in m.hooks if isinstance(h, nn.Module)]
        return {"optimizer": state, "hooks": hooks, "divergence": self.checks[k].state_dict()}

    def _member_optimizer_state(self, k: int) -> dict[str, Any]:
        """Member ``k``'s slice of the optimizer state, as the optimizer of the run alone holds it."""
        m, config = self.plan.members[k], self.plan.optimizer
        stacked = dict(self.encoder.net.named_parameters()) if self.encoder is not None else {}
        groups = build_param_groups(m.named_params, config)
        for group, own in zip(groups, self.optimizer.param_groups):
            group["lr"] = float(own["lr"])
        solo = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
        for name, param in m.named_params:
            chunk = self.encoder is not None and name.startswith("encoder.")
            source = stacked[name[len("encoder."):]] if chunk else param
            buffer = self.optimizer.state.get(source, {}).get("momentum_buffer")
            if buffer is not None:
                solo.state[param] = {"momentum_buffer": (buffer.chunk(self.k, 0)[k] if chunk else buffer).clone()}
        state = solo.state_dict()
        for group in state["param_groups"]:
            group["fused"] = self.optimizer.defaults.get("fused")
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume a run's stage (K = 1) from :meth:`state_dict`."""
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        modules = [h for h in self.plan.members[0].hooks if isinstance(h, nn.Module)]
        for module, module_state in zip(modules, state["hooks"]):
            module.load_state_dict(module_state)
        if "divergence" in state:  # older checkpoints: the level restarts
            self.checks[0].load_state_dict(state["divergence"])
