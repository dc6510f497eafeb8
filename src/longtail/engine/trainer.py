"""The training loop of one stage, written once for the CPU and the CUDA fast path.

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
from ..errors import TrainingError
from .concurrency import DEVICE_RNG_LOCK
from .device import Runtime
from .distributed import broadcast_buffers_, data_parallel, sum_
from .schedules import factor_table
from .sources import DeviceSource

LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class StagePlan:
    """Everything one stage needs: data, what is trained, how the loss is computed, schedule."""

    name: str
    epochs: int
    source: DeviceSource
    named_params: list[tuple[str, nn.Parameter]]
    compute_loss: LossFn  # (inputs, labels) -> (loss, logits); graph-safe
    train_modules: list[nn.Module]  # put in train() mode for the stage
    frozen_modules: list[nn.Module] = field(default_factory=list)  # put in eval() mode
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    hooks: list[Any] = field(default_factory=list)  # objects with on_epoch_start / on_epoch_end
    post_step: list[Callable[[], None]] = field(default_factory=list)
    graph_safe: bool = True
    graph_unsafe_reason: str = ""
    max_steps: int = 0  # > 0: stop after this many steps (iteration-based stages); the last epoch is partial
    compiled: bool = False  # the step calls torch.compile'd code (compiled in the stage's first step)


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


class StepLoop:
    """The step loop :class:`StageTrainer` and :class:`~longtail.engine.stacked.StackedTrainer` share:
    SGD with device-side lr tables, the first steps (torch.compile, CUDA-graph capture or eager
    fallback) and the graph-or-eager steps. A subclass sets ``plan`` (``name``, ``epochs``,
    ``max_steps``, ``compiled``) and ``runtime``, and defines ``_step`` and ``_use_graph``;
    ``_init_loop`` takes the CUDA generators the step draws from (``RunRNG.graph_generators``),
    which the CUDA graph must know of to advance them on each replay."""

    label = "stage"  # names the trainer in warnings and errors

    def _init_loop(self, named_params, optimizer: OptimizerConfig, schedule: ScheduleConfig, steps: int,
                   totals: tuple[int, ...], generators: Sequence[torch.Generator] = ()) -> None:
        device = self.runtime.device
        self.generators = list(generators)
        groups = build_param_groups(named_params, optimizer)
        self.lr_tables = []
        for group in groups:
            table = factor_table(schedule, self.plan.epochs, steps, group["base_lr"]) * group["base_lr"]
            self.lr_tables.append(torch.as_tensor(table, device=device))
            group["lr"] = torch.tensor(float(table[0]), device=device)
        self.optimizer = torch.optim.SGD(
            groups,
            lr=optimizer.lr,
            momentum=optimizer.momentum,
            nesterov=optimizer.nesterov,
            weight_decay=optimizer.weight_decay,
            fused=device.type == "cuda",
        )
        self.step_index = torch.zeros(1, dtype=torch.long, device=device)
        self.totals = torch.zeros(*totals, device=device)  # per row: sum of batch losses, correct predictions
        self.graph: torch.cuda.CUDAGraph | None = None
        self.fallback_reason = ""
        self.compile_seconds = 0.0  # one-off: CUDA-graph capture and/or torch.compile
        self._started = False

    def _optimizer_step(self) -> None:
        """Set the step's learning rates from the tables, then step (after ``backward``)."""
        for group, table in zip(self.optimizer.param_groups, self.lr_tables):
            group["lr"].copy_(table.index_select(0, self.step_index).view(()))
        self.step_index.add_(1)
        self.optimizer.step()

    def _eager_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._step()

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

    def _train_steps(self, epoch: int, steps: int) -> int:
        """Run epoch ``epoch``'s steps (``steps`` a full epoch), replaying the graph or eagerly; returns how many."""
        max_steps = self.plan.max_steps
        last = steps if not max_steps else min(steps, max_steps - epoch * steps)
        done = self._first_steps(last) if not self._started else 0
        self._started = True
        for _ in range(done, last):
            with DEVICE_RNG_LOCK:
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._eager_step()
        return last


class StageTrainer(StepLoop):
    """Runs the epochs of one :class:`StagePlan`; ``stage_index`` names the stage in messages;
    ``generators``: the CUDA generators the plan's step draws from (``ctx.rng.graph_generators()``)."""

    def __init__(self, plan: StagePlan, runtime: Runtime, progress: bool = True,
                 divergence_factor: float | None = DEFAULT_DIVERGENCE_FACTOR, stage_index: int | None = None,
                 generators: Sequence[torch.Generator] = ()):
        self.plan, self.runtime, self.progress = plan, runtime, progress
        where = f"stages.{stage_index}" if stage_index is not None else "stages.N"
        self.check = DivergenceCheck(plan.name, divergence_factor, where, plan.optimizer.lr)
        self._init_loop(plan.named_params, plan.optimizer, plan.schedule, plan.source.steps_per_epoch, (2,), generators)
        self.loss_step = plan.compute_loss
        if runtime.world.size > 1:  # engine/distributed.py
            self.loss_step = data_parallel(plan.compute_loss, [p for _, p in plan.named_params], plan.train_modules,
                                           runtime.device, static=plan.graph_safe)

    # ------------------------------------------------------------------ the step
    def _step(self) -> None:
        x, y = self.plan.source.next()
        with self.runtime.autocast():
            loss, logits = self.loss_step(x, y)
        loss.backward()  # under DDP, also the gradients' average over the ranks
        self._optimizer_step()
        for constraint in self.plan.post_step:
            constraint()
        correct = (logits.detach().argmax(1) == y).sum()
        self.totals.add_(torch.stack([loss.detach().float(), correct.float()]))

    def _use_graph(self) -> bool:
        if not self.runtime.cuda_graph:
            return False
        if self.runtime.world.size > 1:
            self.fallback_reason = "distributed steps run eagerly (collectives are not captured in the CUDA graph)"
            return False
        if not self.plan.graph_safe:
            self.fallback_reason = self.plan.graph_unsafe_reason or "the stage is marked graph-unsafe"
            return False
        return True

    # ------------------------------------------------------------------ epochs
    def set_modes(self) -> None:
        for module in self.plan.train_modules:
            module.train()
        for module in self.plan.frozen_modules:
            module.eval()

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch; return its mean loss, training accuracy and final learning rate."""
        plan = self.plan
        self.set_modes()
        steps = plan.source.steps_per_epoch
        for hook in plan.hooks:
            hook.on_epoch_start(epoch, plan.epochs)
            if getattr(hook, "loss_changes_at", lambda _: False)(epoch):
                self.check.restart()
        plan.source.start_epoch(epoch)
        self.step_index.fill_(epoch * steps)
        self.totals.zero_()
        last = self._train_steps(epoch, steps)
        for hook in plan.hooks:
            hook.on_epoch_end()
        world = self.runtime.world
        broadcast_buffers_(plan.train_modules, world)  # rank 0's BatchNorm statistics everywhere
        stats = torch.cat([self.totals, nonfinite_count([p for _, p in plan.named_params], self.totals)])
        loss_sum, correct, bad = sum_(stats, world).tolist()  # the one host sync of the epoch
        loss_sum /= world.size  # each rank's loss is the mean over its slice of the batch
        seen = last * plan.source.batch_size
        self.check(epoch, loss_sum / last, int(bad))
        lr = float(self.optimizer.param_groups[0]["lr"])
        return {"loss": loss_sum / last, "train_acc": 100.0 * correct / seen, "lr": lr}

    def fit(
        self,
        start_epoch: int = 0,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    ) -> list[dict[str, float]]:
        """Train epochs ``start_epoch .. epochs-1``; ``on_epoch_end(epoch, metrics)`` after each."""
        history = []
        bar = tqdm(
            range(start_epoch, self.plan.epochs),
            desc=self.plan.name,
            unit="ep",
            disable=not self.progress or not self.runtime.world.main,
            dynamic_ncols=True,
        )
        for epoch in bar:
            start = time.perf_counter()
            metrics = self.run_epoch(epoch)
            metrics["seconds"] = time.perf_counter() - start
            metrics["epoch"] = epoch + 1
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['train_acc']:.1f}", lr=f"{metrics['lr']:.2g}")
            history.append(metrics)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        return history

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        for group in state["param_groups"]:
            group["lr"] = float(group["lr"])
        hooks = [h.state_dict() for h in self.plan.hooks if isinstance(h, nn.Module)]
        return {"optimizer": state, "hooks": hooks, "divergence": self.check.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        modules = [h for h in self.plan.hooks if isinstance(h, nn.Module)]
        for module, module_state in zip(modules, state["hooks"]):
            module.load_state_dict(module_state)
        if "divergence" in state:  # older checkpoints: the level restarts
            self.check.load_state_dict(state["divergence"])
