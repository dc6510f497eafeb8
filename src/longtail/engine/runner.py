"""Run a config end to end: data, model, stages, checkpoints, evaluation, run folder.

The run folder ``<output_dir>/<name>/seed<seed>/`` holds:

- ``config.yaml``   the resolved config the run started with;
- ``config.sha256`` its fingerprint (:func:`~longtail.config.config_fingerprint`: every setting but
  :data:`~longtail.config.RESULT_NEUTRAL_KEYS`, which cannot change results);
- ``env.json``      versions, device, commit, command of the process that started the run;
- ``metrics.jsonl`` one line per epoch (stage, epoch, loss, train accuracy, lr, seconds, ...);
- ``tensorboard/``  with ``engine.tensorboard: true``, the same records as TensorBoard scalars
  (tag ``<stage>/<key>``, step = the stage's epoch); needs ``pip install 'longtail[tensorboard]'``;
- ``checkpoint.pt`` the latest state (stage, epoch, model, optimizer, loss state, the run's
  generators, the stages' own states), written
  atomically every ``engine.checkpoint_every`` epochs and at the end of each stage;
- ``stage<i>_<name>.pt`` the model weights after each stage (shared stage 1 for benchmarks);
- ``results.json``  final metrics (test, and validation when there is a split), the
  checkpoint-selection rule, per-class weight norms, the stages' settings (``stage_options``) and
  what they decided (``stage_records``), timings;
- ``per_class_accuracy.png``, ``weight_norms.png``.

The folder is bound to its config: a folder holding work (a checkpoint or results) of a config
with another fingerprint is refused with the differing settings (:func:`check_bound`); with the
same one, a finished run (``results.json``) is reported again and an interrupted one resumes from
``checkpoint.pt`` (its metrics.jsonl cut back to the checkpoint). ``fresh=True`` (``--fresh``)
builds and checks everything first, then moves the old folder aside (``old-seed<N>-<time>``).
Nothing is written before the data, model and every stage are checked; every file is written
atomically (:mod:`longtail.atomic`), through :class:`RunFolder`. Inspection (``longtail eval``) builds
through :meth:`Run.build`, which writes nothing. Under data parallelism (``engine/distributed.py``) every
rank trains and evaluates and rank 0 alone writes the folder.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from ..atomic import atomic_write_text, make_folder, move_aside, remove_stale_temporaries
from ..config import RunConfig, config_changes, config_fingerprint, freeze, read_run_config, to_dict
from ..data.dataset import LongTailedDataset
from ..data.factory import load_dataset
from ..data.files import FileDataset, FileSplit
from ..errors import ConfigError, DataError, StorageError, TrainingError, first_line
from ..eval.metrics import EvalResult, weight_norms
from ..eval.plots import plot_per_class_accuracy, plot_weight_norms
from ..eval.report import format_report, write_json
from ..models.factory import build_model
from ..models.stacked import StackedEncoder, stack_refusal as encoder_refusal
from .checkpoint import atomic_save, load_checkpoint
from .concurrency import DEVICE_RNG_LOCK
from .device import Runtime
from .distributed import parallel_path, sync_batchnorm
from .evaluate import evaluate_model
from .rng import RunRNG
from .stages import RunContext
from .trainer import StagePlan, Trainer


def git_commit(path: Path | None = None) -> str:
    """The commit of the source tree (``+dirty`` when it has uncommitted changes), or 'unknown'."""
    where = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return os.environ.get("LONGTAIL_COMMIT", "unknown")
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True, timeout=5
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("LONGTAIL_COMMIT", "unknown")


def environment(runtime: Runtime, command: str | None = None) -> dict[str, Any]:
    import torchvision

    import longtail

    return {
        "longtail": longtail.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "runtime": runtime.describe(),
        "commit": git_commit(),
        **({"declared_commit": os.environ["LONGTAIL_COMMIT"]} if os.environ.get("LONGTAIL_COMMIT") else {}),
        "command": command or " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_dir_of(config: RunConfig) -> Path:
    return Path(config.output_dir) / config.name / f"seed{config.seed}"


def _to_device(dataset, device: torch.device) -> dict[str, tuple[torch.Tensor | FileSplit, torch.Tensor]]:
    """Each split's (inputs, labels) on the device; a file-backed split's images stay on disk."""
    splits = {"train": dataset.train, "test": dataset.test}
    if dataset.val is not None:
        splits["val"] = dataset.val
    file_backed = isinstance(dataset, FileDataset)
    return {
        name: (split if file_backed else torch.as_tensor(split.x).to(device), torch.as_tensor(split.y).to(device))
        for name, split in splits.items()
    }


class RunFolder:
    """One run folder (see the module docstring): what is in it (a finished run's results, the
    checkpoint to resume from) and every write into it, atomic where it replaces a file; nothing
    is written where ``writes`` is False (ranks other than 0 under data parallelism)."""

    def __init__(self, config: RunConfig, runtime: Runtime, command: str | None, fresh: bool,
                 clock: Callable[[], float]):
        self.config = config
        self.runtime = runtime
        self.command = command
        self.fresh = fresh
        self.clock = clock  # the run's elapsed seconds, recorded in each checkpoint
        self.run_dir = run_dir_of(config)
        self.writes = runtime.world.main  # under data parallelism rank 0 alone writes the run folder
        self._tensorboard = None  # the SummaryWriter, opened with the first record

    # ------------------------------------------------------------------ reads
    def finished_results(self) -> dict[str, Any] | None:
        """The results of this config's finished run in the folder, else None; a folder holding a
        run of another config is a ConfigError (with ``fresh`` the folder is not looked at)."""
        if self.fresh:
            return None
        check_bound(self.run_dir, self.config)
        path = self.run_dir / "results.json"
        return json.loads(path.read_text()) if path.exists() else None

    def resume_state(self) -> dict[str, Any] | None:
        """The checkpoint to resume from (None: start from scratch)."""
        path = self.run_dir / "checkpoint.pt"
        return load_checkpoint(path) if not self.fresh and path.exists() else None

    def saved_work(self) -> str:
        """What a failed stage leaves to resume from, for its error message."""
        path = self.run_dir / "checkpoint.pt"
        if not path.exists():
            return "No checkpoint had been written yet (engine.checkpoint_every sets how often)."
        try:
            saved = load_checkpoint(path)
        except TrainingError:
            return f"{path} was left as it was."
        stage = self.config.stages[saved["stage"]].name
        return f"The last checkpoint ({path}: stage {stage!r}, epoch {saved['epoch']}) is intact."

    # ------------------------------------------------------------------ writes
    def open(self, resume: dict[str, Any] | None) -> None:
        """Make the run folder ready, once everything is built and checked: with ``fresh`` the old
        folder is moved aside (never deleted); a new run records its config, fingerprint and
        environment, a resumed one keeps them; metrics past the checkpoint and temporary files left
        by a kill are dropped."""
        if not self.writes:
            return
        if self.fresh and self.run_dir.exists():
            aside = move_aside(self.run_dir)
            warnings.warn(f"--fresh: the earlier run folder {self.run_dir} was moved to {aside}", stacklevel=3)
        make_folder(self.run_dir)
        remove_stale_temporaries(self.run_dir)
        if resume is None:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(self.config), sort_keys=False))
            write_json(self.run_dir / "env.json", environment(self.runtime, self.command))
        atomic_write_text(self.run_dir / FINGERPRINT, config_fingerprint(self.config) + "\n")
        truncate_metrics(self.run_dir / "metrics.jsonl", self.config, resume)

    def log(self, record: dict[str, Any]) -> None:
        """One epoch's record: a line of metrics.jsonl, and TensorBoard scalars when enabled."""
        if not self.writes:
            return
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise StorageError(f"cannot append to {path} ({first_line(exc)}); the checkpoints written so far are "
                               "intact. Free disk space, then run the same command again") from None
        if self.config.engine.tensorboard:
            if self._tensorboard is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            for key, value in record.items():
                if key not in ("stage", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(f"{record['stage']}/{key}", value, global_step=record["epoch"])
            self._tensorboard.flush()

    def close(self) -> None:
        """Close the TensorBoard writer, if one was opened."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def save(self, ctx: RunContext, stage_index: int, epoch: int, trainer: dict[str, Any] | None) -> None:
        """Write checkpoint.pt: the model, the run's ``trainer`` state (:meth:`Trainer.state_dict`; None at
        a stage's end), its generators, the stages' states and elapsed seconds, to resume from ``epoch``
        of stage ``stage_index``."""
        if not self.writes:
            return
        atomic_save(
            {
                "stage": stage_index,
                "epoch": epoch,
                "model": ctx.model.state_dict(),
                "trainer": trainer,
                "generators": ctx.rng.state_dict(),
                "stage_states": ctx.stage_states(),
                "elapsed_seconds": self.clock(),
            },
            self.run_dir / "checkpoint.pt",
        )

    def finish_stage(self, ctx: RunContext, index: int, stage) -> None:
        """Write the stage's weights (``stage<i>_<name>.pt``) and drop its cached features."""
        if self.writes:
            atomic_save({"model": ctx.model.state_dict(), "stage": index}, self.run_dir / f"stage{index}_{stage.name}.pt")
        ctx.feature_cache.clear()

    def write_results(self, results: dict[str, Any]) -> None:
        """Write results.json and the per-class accuracy and weight-norm plots."""
        if not self.writes:
            return
        write_json(self.run_dir / "results.json", results)
        counts = results["class_counts"]
        label = self.config.name
        plot_per_class_accuracy({label: (counts, results["test"]["per_class_accuracy"])}, self.run_dir / "per_class_accuracy.png",
                                class_names=results.get("class_names"))
        plot_weight_norms({label: (counts, results["weight_norms"])}, self.run_dir / "weight_norms.png")


class Run:
    """One run of a config; ``execute()`` trains every stage and returns the results dict.

    Its public members are what :class:`StageLoop` (also for a stack) and ``longtail eval`` need:
    :meth:`build` (data and model, writing nothing), :meth:`evaluate`, :meth:`init_from`,
    :meth:`start_clock` / :meth:`elapsed_seconds`, :meth:`results`, and ``folder`` (a
    :class:`RunFolder`: the folder's reads and every write into it)."""

    def __init__(self, config: RunConfig, command: str | None = None, fresh: bool = False,
                 dataset: LongTailedDataset | FileDataset | None = None):
        self.config = freeze(config)  # settings only, from here on: what stages decide is their state
        self.command = command
        self.dataset = dataset  # a dataset built in Python (your own data) instead of config.data
        self.runtime = Runtime.resolve(config.engine)
        self.folder = RunFolder(self.config, self.runtime, command, fresh, self.elapsed_seconds)
        if config.engine.tensorboard:
            _require_tensorboard()

    @property
    def run_dir(self) -> Path:
        return self.folder.run_dir

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (rank 0 alone under data parallelism)."""
        return self.folder.writes

    @property
    def fresh(self) -> bool:
        """``--fresh``: the folder's earlier run is neither reported nor resumed, and is moved aside."""
        return self.folder.fresh

    # ------------------------------------------------------------------ set-up
    def build(self) -> RunContext:
        """Data, model and device splits, and the run's generators (seeded with its seed); writes nothing."""
        config = self.config
        dataset = self.dataset if self.dataset is not None else load_dataset(config.data)
        rng = RunRNG(config.seed, self.runtime.device)
        with rng.initialising():
            model = self._build_model(dataset)
        return RunContext(config, self.runtime, dataset, model, _to_device(dataset, self.runtime.device), self.run_dir,
                          rng)

    def _build_model(self, dataset):
        config = self.config
        in_channels = 3 if isinstance(dataset, FileDataset) or not dataset.is_image else dataset.train.x.shape[1]
        model = build_model(
            "identity" if not dataset.is_image else config.model.encoder,
            dataset.num_classes,
            head=config.model.head,
            in_channels=in_channels,
            in_dim=None if dataset.is_image else dataset.train.x.shape[1],
            pretrained=config.model.pretrained,
            **config.model.head_options,
        ).to(self.runtime.device)
        if self.runtime.channels_last and dataset.is_image:
            model = model.to(memory_format=torch.channels_last)
        if self.runtime.sync_batchnorm:
            model = sync_batchnorm(model)
        return model

    # ------------------------------------------------------------------ main loop
    def execute(self) -> dict[str, Any]:
        try:
            return self._execute()
        finally:
            self.folder.close()

    def _execute(self) -> dict[str, Any]:
        finished = self.folder.finished_results()
        if finished is not None:
            return finished
        started = time.perf_counter()
        return StageLoop([self], self.folder.resume_state()).execute(started)[0]

    def start_clock(self, started: float, before: float = 0.0) -> None:
        """Count the run's time from ``started`` (``time.perf_counter()``), after ``before`` seconds spent earlier."""
        self._elapsed = (started, before)

    def elapsed_seconds(self) -> float:
        """Seconds this run has taken, earlier processes' up to their last checkpoint included."""
        started, before = self._elapsed
        return before + time.perf_counter() - started

    def init_from(self, ctx: RunContext, path: str) -> None:
        """Load the model weights of the checkpoint at ``path`` (a stage's ``init_from``)."""
        state = load_checkpoint(path, map_location=self.runtime.device)
        load_weights(ctx.model, state["model"], path)

    def evaluate(self, ctx: RunContext, split: str) -> EvalResult:
        """The model's evaluation on ``split`` ("train", "val" or "test") with the config's eval settings."""
        inputs, labels = ctx.splits[split]
        ev = self.config.eval
        return evaluate_model(
            ctx.model, inputs, labels, ctx.class_counts, self.runtime, ctx.dataset.mean, ctx.dataset.std,
            ev.batch_size, ev.many_threshold, ev.few_threshold,
        )

    def results(self, ctx: RunContext, timings: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        """The results dict (written as results.json): test (and val) evaluation, weight norms, timings, env."""
        test = self.evaluate(ctx, "test")
        out: dict[str, Any] = {
            "name": self.config.name,
            "seed": self.config.seed,
            "dataset": ctx.dataset.name,
            "dataset_meta": ctx.dataset.meta,
            "class_counts": ctx.class_counts.tolist(),
            "class_names": list(ctx.dataset.class_names),
            "selection": {
                "last": "the model after the last epoch of the last stage",
                "best_val": "the epoch of the last training stage with the best validation top-1",
            }[self.config.eval.select],
            "test": test.to_dict(),
            "weight_norms": weight_norms(ctx.model.head.class_weight().detach().float()).tolist(),
            "stage_options": [stage["options"] for stage in to_dict(self.config)["stages"]],
            "stage_records": [kind.record() for kind in ctx.kinds],
            "timings": timings,
            "seconds": seconds,
            "distributed": parallel_path(self.runtime.world, self.runtime.sync_batchnorm),
            "env": environment(self.runtime, self.command),
        }
        if "val" in ctx.splits:
            out["val"] = self.evaluate(ctx, "val").to_dict()
        if self.runtime.device.type == "cuda":
            out["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(self.runtime.device) / 2**20
        return out


class StageLoop:
    """The stages of ``runs``, trained and written to their folders as each run alone would.

    One run (K = 1) is the ordinary run, resuming from ``resume`` (its checkpoint) if given; K > 1
    fresh runs train as a stack (:mod:`longtail.engine.stacked`): one :class:`Trainer` per training
    stage over the members' plans, a whole-network stage on one :class:`StackedEncoder`. Every run is
    built and checked before any folder opens; each is evaluated, logged and checkpointed as alone."""

    def __init__(self, runs: list[Run], resume: dict[str, Any] | None = None):
        self.runs, self.resume = runs, resume
        self.names = [f"{run.config.name}/seed{run.config.seed}" for run in runs]
        self.timings: list[list[dict[str, Any]]] = [[] for _ in runs]
        self.best_val: list[tuple[float, dict[str, torch.Tensor]] | None] = [None] * len(runs)

    def execute(self, started: float) -> list[dict[str, Any]]:
        """Train every stage; the runs' results dicts, in order (``started``: ``time.perf_counter()``)."""
        runs, resume = self.runs, self.resume
        self.ctxs = [run.build() for run in runs]  # each with its own generators and model, as alone
        if len(runs) > 1:
            for ctx in self.ctxs:
                reason = encoder_refusal(ctx.model.encoder)
                if reason:
                    raise ConfigError(f"run {ctx.config.name!r} cannot be stacked: {reason}")
        for ctx in self.ctxs:
            for kind, stage in zip(ctx.kinds, ctx.config.stages):
                kind.check(ctx, stage)  # fail before stage 1 trains, not after
        for run in runs:
            run.folder.open(resume)  # only now, with everything built and checked
            # training time is kept across resumes: the checkpoint carries the time spent up to it
            run.start_clock(started, resume.get("elapsed_seconds", 0.0) if resume else 0.0)
        self.last_training = [max((i for i, k in enumerate(ctx.kinds) if k.trains), default=-1) for ctx in self.ctxs]
        for index in range(len(runs[0].config.stages)):
            self._stage(index)
        out = []
        for k, (run, ctx) in enumerate(zip(runs, self.ctxs)):
            if self.best_val[k] is not None:
                ctx.model.load_state_dict(self.best_val[k][1])
            results = run.results(ctx, self.timings[k], run.elapsed_seconds())
            if resume is not None:
                results["resumed_from"] = {"stage": resume["stage"], "epoch": resume["epoch"]}
            results.update(self._stacked(k))
            run.folder.write_results(results)
            out.append(results)
        return out

    def _stacked(self, k: int) -> dict[str, Any]:
        """What member ``k``'s results and timings record of its stack (nothing for one run)."""
        if len(self.runs) == 1:
            return {}
        return {"stacked": {"members": len(self.runs), "member": k, "runs": self.names}}

    def _stage(self, index: int) -> None:
        runs, ctxs, resume = self.runs, self.ctxs, self.resume
        stages = [run.config.stages[index] for run in runs]
        kinds = [ctx.kinds[index] for ctx in ctxs]
        for ctx, kind, stage in zip(ctxs, kinds, stages):
            with ctx.rng.initialising():  # a new head's weights
                kind.prepare(ctx, stage)
        start_epoch = 0
        if resume is not None and index < resume["stage"]:
            return  # finished before the interruption; its weights come with the checkpoint
        if resume is not None and index == resume["stage"]:
            ctx = ctxs[0]
            load_weights(ctx.model, resume["model"], runs[0].run_dir / "checkpoint.pt")
            ctx.load_stage_states(saved_stage_states(resume, runs[0].config))
            load_generators(ctx.rng, resume)
            start_epoch = resume["epoch"]
        if stages[0].init_from:
            for run, ctx, stage, timing in zip(runs, ctxs, stages, self.timings):
                run.init_from(ctx, stage.init_from)
                timing.append({"stage": stage.name, "seconds": 0.0, "init_from": stage.init_from})
                run.folder.finish_stage(ctx, index, stage)
        elif not kinds[0].trains or (start_epoch >= stages[0].epochs and not stages[0].iterations):
            for run, ctx, kind, stage, timing in zip(runs, ctxs, kinds, stages, self.timings):  # post-hoc, or done
                start = time.perf_counter()
                if not kind.trains:
                    kind.build(ctx, stage)
                timing.append({"stage": stage.name, "seconds": time.perf_counter() - start, "compile_seconds": 0.0,
                               "cuda_graph": False, "fallback_reason": "", "steps_per_epoch": 0, "batch_size": 0})
                run.folder.save(ctx, index, stage.epochs, None)  # post-hoc: its epochs are not used
                run.folder.finish_stage(ctx, index, stage)
        else:
            self._train(index, start_epoch)

    def _train(self, index: int, start_epoch: int) -> None:
        runs, ctxs, resume = self.runs, self.ctxs, self.resume
        stage_start = time.perf_counter()
        plan = _stage_plan(ctxs, index, self.names)
        config = runs[0].config
        trainer = Trainer(plan, runs[0].runtime, progress=config.engine.progress,
                          divergence_factor=config.engine.divergence_factor, stage_index=index)
        if resume is not None and index == resume["stage"] and resume["trainer"] is not None:
            trainer.load_state_dict(resume["trainer"])
        try:
            trainer.fit(start_epoch, lambda epoch, metrics: self._on_epoch_end(trainer, index, epoch, metrics))
        except TrainingError as exc:  # the inputs are checked before the learning rate is blamed
            saved = " ".join(run.folder.saved_work() for run in runs)
            raise non_finite_inputs(ctxs[0]) or TrainingError(f"{exc} {saved}") from None
        self._sync(plan)
        seconds = time.perf_counter() - stage_start
        for k, (run, ctx) in enumerate(zip(runs, ctxs)):
            stage = run.config.stages[index]
            self.timings[k].append({
                "stage": stage.name, "seconds": seconds, "compile_seconds": trainer.compile_seconds,
                "cuda_graph": trainer.graph is not None, "fallback_reason": trainer.fallback_reason,
                "steps_per_epoch": trainer.steps, "batch_size": plan.members[k].source.batch_size, **self._stacked(k),
            })
            run.folder.save(ctx, index, plan.epochs, None)
            run.folder.finish_stage(ctx, index, stage)

    def _sync(self, plan: StagePlan) -> None:
        """The members' encoders from the stack's (before evaluation and checkpoints)."""
        if plan.encoder is not None:
            for k, ctx in enumerate(self.ctxs):
                plan.encoder.load_member(k, ctx.model.encoder)

    def _on_epoch_end(self, trainer: Trainer, index: int, epoch: int, metrics: list[dict[str, float]]) -> None:
        """Each run's epoch: test and validation evaluation, best_val selection, log, periodic checkpoint."""
        synced = False
        for k, (run, ctx) in enumerate(zip(self.runs, self.ctxs)):
            config = run.config
            record = {"stage": config.stages[index].name, **metrics[k]}
            wants_test = config.eval.every and (epoch + 1) % config.eval.every == 0
            wants_val = config.eval.select == "best_val" and index == self.last_training[k]
            every = config.engine.checkpoint_every
            saves = every and (epoch + 1) % every == 0 and epoch + 1 < trainer.plan.epochs
            if (wants_test or wants_val or saves) and not synced:
                self._sync(trainer.plan)
                synced = True
            if wants_test:
                record["test_top1"] = run.evaluate(ctx, "test").top1
            if wants_val:
                val_top1 = run.evaluate(ctx, "val").top1
                record["val_top1"] = val_top1
                if self.best_val[k] is None or val_top1 > self.best_val[k][0]:
                    self.best_val[k] = (val_top1, copy.deepcopy(ctx.model.state_dict()))
            run.folder.log(record)
            if saves:
                run.folder.save(ctx, index, epoch + 1, trainer.state_dict(k))


def _stage_plan(ctxs: list[RunContext], index: int, names: list[str]) -> StagePlan:
    """Stage ``index``'s plan: the run's own, or the stack's (each member's plan as its run alone
    builds it, on one :class:`StackedEncoder` for a whole-network stage)."""
    plans = [ctx.kinds[index].build(ctx, ctx.config.stages[index]) for ctx in ctxs]
    if len(plans) == 1:
        return plans[0]
    members = [plan.members[0] for plan in plans]
    for member, name in zip(members, names):
        member.name = name
    encoder = None
    if ctxs[0].config.stages[index].train != "head":
        # its own initialisation (overwritten by the members' weights) leaves the global RNG as it was
        with DEVICE_RNG_LOCK, torch.random.fork_rng(devices=[]):
            encoder = StackedEncoder([ctx.model.encoder for ctx in ctxs])
    return dataclasses.replace(plans[0], members=members, encoder=encoder)


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401  (what torch.utils.tensorboard writes with)
    except ImportError:
        raise ConfigError(
            "engine.tensorboard: true needs the tensorboard package: pip install 'longtail[tensorboard]' "
            "(or set engine.tensorboard=false; metrics.jsonl has the same records)"
        ) from None


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: Path | str) -> None:
    """``model.load_state_dict(state)``; weights of another architecture are a TrainingError naming the file."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        cause = " ".join(str(exc).split())
        cause = cause if len(cause) <= 300 else cause[:299] + "…"
        raise TrainingError(f"the weights in {path} do not fit the model this config builds ({cause}): "
                            "they come from another model (encoder, head or code version); use weights of this "
                            "model, or train again with --fresh or under a new name=") from None


def load_generators(rng: RunRNG, checkpoint: dict[str, Any]) -> None:
    """The run's generators as the checkpoint left them; a checkpoint of the code before per-run
    generators holds the global states instead (``rng``), mapped by :meth:`RunRNG.load_global_state`."""
    if "generators" in checkpoint:
        rng.load_state_dict(checkpoint["generators"])
    else:
        rng.load_global_state(checkpoint["rng"])


def non_finite_inputs(ctx: RunContext) -> DataError | None:
    """A DataError naming the training rows whose (float) inputs hold NaN or inf, else None."""
    inputs = ctx.splits["train"][0]
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        return None
    bad = (~torch.isfinite(inputs.flatten(1))).any(1).nonzero().flatten().tolist()
    if not bad:
        return None
    source = ctx.dataset.train.indices
    where = "" if source is None else f"; source rows {', '.join(str(int(source[i])) for i in bad[:10])}"
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    return DataError(f"{ctx.dataset.name}: {len(bad)} training input(s) hold NaN or inf values (rows "
                     f"{', '.join(map(str, bad[:10]))}{more} of the training split{where}), so the loss cannot be "
                     "finite: fix or drop those rows (the learning rate is not the cause)")


FINGERPRINT = "config.sha256"  # config_fingerprint of the config that made the run folder
WAYS_OUT = ("to keep both, give this run a new name=NAME or output_dir=DIR; to replace the old run, add --fresh "
            "(it is moved aside, not deleted)")


def check_bound(run_dir: Path, config: RunConfig) -> None:
    """A ConfigError when ``run_dir`` holds work (a checkpoint or results) of a config whose results
    could differ from ``config``'s; it names the differing keys and the ways out. The fingerprint
    decides; folders without one (or from an older schema) are compared with their config.yaml."""
    if not any((run_dir / name).exists() for name in ("checkpoint.pt", "results.json")):
        return  # no work to lose or to mix with
    recorded = run_dir / "config.yaml"
    if not recorded.is_file():
        raise ConfigError(f"{run_dir} holds a run without its config.yaml, so it cannot be matched to this config; "
                          f"{WAYS_OUT}")
    stored = run_dir / FINGERPRINT
    if stored.is_file() and stored.read_text().strip() == config_fingerprint(config):
        return
    try:
        changes = config_changes(read_run_config(recorded), config)
    except ConfigError as exc:
        raise ConfigError(f"{run_dir} holds a run whose config.yaml no longer loads ({exc}); {WAYS_OUT}") from None
    if changes:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise ConfigError(f"{run_dir} holds a run of another config ({len(changes)} setting(s) differ: {shown}); "
                          f"{WAYS_OUT}")


def truncate_metrics(path: Path, config: RunConfig, resume: dict[str, Any] | None) -> None:
    """Keep the metrics.jsonl records up to the checkpoint the run resumes from (none when it starts
    from scratch), so no epoch is recorded twice; a line torn by a kill is dropped."""
    if not path.exists():
        return
    order = {stage.name: i for i, stage in enumerate(config.stages)}
    until = (resume["stage"], resume["epoch"]) if resume else (-1, 0)
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (order.get(record.get("stage"), len(order)), record.get("epoch", 0)) <= until:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def run_config(config: RunConfig, command: str | None = None, fresh: bool = False,
               dataset: LongTailedDataset | FileDataset | None = None) -> dict[str, Any]:
    """Train and evaluate ``config``; return the results dict (also written to the run folder).
    ``dataset`` (a :class:`LongTailedDataset` built in Python) replaces the one ``config.data`` names;
    the run folder's fingerprint then still covers only the config, so give such runs their own name."""
    return Run(config, command=command, fresh=fresh, dataset=dataset).execute()


def report(results: dict[str, Any]) -> str:
    """The many/medium/few report of a results dict."""
    return format_report(EvalResult.from_dict(results["test"]), results.get("class_names"),
                         title=f"{results['name']} (seed {results['seed']}) — test")


def saved_stage_states(checkpoint: dict[str, Any], config: RunConfig) -> list[dict[str, Any]]:
    """The stages' states in ``checkpoint``; a checkpoint written before stages kept their own state
    carried them in its ``stage_options`` (the config's options plus what the stage wrote)."""
    if "stage_states" in checkpoint:
        return checkpoint["stage_states"]
    return [{k: v for k, v in saved.items() if k not in stage.options and k != "record"} | saved.get("record", {})
            for stage, saved in zip(config.stages, checkpoint["stage_options"])]
