"""Stage kinds: how each kind of stage changes the model and what it trains.

A stage kind has two parts, kept apart so that a resumed run can rebuild the model's structure
before loading its weights:

- ``prepare(ctx, stage)``: structural changes only (a new or wrapped head, frozen encoder);
- ``build(ctx, stage)``: the :class:`StagePlan` to train, or ``None`` for post-hoc stages
  (which do their work here: tau-norm, NCM, post-hoc logit adjustment).

``supervised`` covers every stage trained by gradient descent on real data: stage 1 (whole
network) and classifier re-training on a frozen encoder (cRT, LWS, LWS-Plus, WD+MaxNorm, IWB,
BWLM's stage 2) from cached features or online with augmentation; with ``shift_bn``
(online only) the frozen encoder's BatchNorm statistics are re-estimated on the stage's batches
(MiSLAS).
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..config import RunConfig, StageConfig
from ..data.dataset import LongTailedDataset
from ..data.files import FileDataset, FileSplit
from ..data.augmentations import augment_spec, build_augment, file_transforms
from ..data.mixing import build_mixer, check_mixing, mixed_loss
from ..data.sampling import build_sampler
from ..errors import ConfigError
from ..eval.metrics import per_class_accuracy
from ..features.extract import extract_features
from ..losses import LOSSES, build_loss
from ..losses.base import check_loss_options, set_generator
from ..losses.logit_adjust import posthoc_logit_adjustment
from ..models.factory import LTModel
from ..models.heads import HEADS, FrozenBaseHead, Head, LinearHead, NCMHead, TauNormHead
from ..registry import Registry
from .device import Runtime
from .file_source import LoaderSource, eval_batches
from .maxnorm import MaxNorm
from .rng import RunRNG
from .sources import DeviceSource, epochs_for_iterations, steps_per_epoch
from .trainer import Member, StagePlan

STAGE_KINDS = Registry("stage kind")


@dataclass
class RunContext:
    """What the stages of one run share: config, machine, data on the device, the model, its random streams."""

    config: RunConfig
    runtime: Runtime
    dataset: LongTailedDataset | FileDataset
    model: LTModel
    splits: dict[str, tuple[torch.Tensor | FileSplit, torch.Tensor]]  # name -> (inputs, labels); labels on the device
    run_dir: Path
    rng: RunRNG  # every random draw of the run's stages (engine/rng.py)
    class_counts: np.ndarray = field(init=False)
    feature_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    kinds: list[StageKind] = field(init=False)  # one per stage, holding the stage's state

    def __post_init__(self) -> None:
        self.class_counts = self.dataset.class_counts
        self.kinds = [stage_kind(stage.kind) for stage in self.config.stages]

    def stage_states(self) -> list[dict[str, Any]]:
        """Every stage's state (:meth:`StageKind.state_dict`), as a checkpoint keeps them."""
        return [kind.state_dict() for kind in self.kinds]

    def load_stage_states(self, states: list[dict[str, Any]]) -> None:
        for kind, state in zip(self.kinds, states):
            kind.load_state_dict(state)

    def counts_tensor(self) -> torch.Tensor:
        return torch.as_tensor(self.class_counts, device=self.runtime.device)

    def features(self, split: str) -> torch.Tensor:
        """Encoder features of a split (no augmentation), cached until the encoder changes."""
        if split not in self.feature_cache:
            inputs, _ = self.splits[split]
            options = dict(
                batch_size=self.config.eval.batch_size,
                device=self.runtime.device,
                autocast_dtype=torch.bfloat16 if self.runtime.bf16 else None,
                channels_last=self.runtime.channels_last,
            )
            if isinstance(inputs, FileSplit):  # normalised batches from a DataLoader
                batches = eval_batches(inputs, options["batch_size"], self.runtime, self.dataset.mean, self.dataset.std)
                features = torch.cat([extract_features(self.model.encoder, x, **options) for x in batches])
            else:
                features = extract_features(self.model.encoder, inputs, self.dataset.mean, self.dataset.std, **options)
            self.feature_cache[split] = features
        return self.feature_cache[split]


class StageKind:
    """Base: a stage kind changes the model in ``prepare`` and trains it through ``build``.

    ``trains``: whether ``build`` returns a plan trained by gradient descent (post-hoc kinds say
    False). ``check(ctx, stage)`` validates the stage against the run before any stage trains.
    """

    trains: bool = True
    epoch_options: tuple[str, ...] = ()  # keys of ``stage.options`` that hold epochs (epoch_scale moves them)

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}  # what the stage decided while running (plain values)

    def state_dict(self) -> dict[str, Any]:
        """The stage's own state (e.g. a chosen tau, MaxNorm's thresholds), saved in checkpoints."""
        return copy.deepcopy(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = copy.deepcopy(state)

    def record(self) -> dict[str, Any]:
        """What ``results.json`` records of the stage (``stage_records``): its state, by default."""
        return self.state_dict()

    def check(self, ctx: RunContext, stage: StageConfig) -> None:
        """Raise a ConfigError naming the fix if the stage cannot run on this run's data.

        The base checks a training stage's loss and mixing specs (:func:`check_stage_specs`);
        overrides call ``super().check`` to keep that."""
        if self.trains:
            check_stage_specs(stage)

    def prepare(self, ctx: RunContext, stage: StageConfig) -> None:
        if stage.head:
            ctx.model.replace_head(make_head(stage.head, ctx.model.head, stage.head_options).to(ctx.runtime.device))
        frozen = stage.train == "head"
        ctx.model.encoder.requires_grad_(not frozen)
        if not frozen:
            ctx.feature_cache.clear()

    def build(self, ctx: RunContext, stage: StageConfig) -> StagePlan | None:
        raise NotImplementedError


def make_head(kind: str, current: Head, options: dict[str, Any]) -> Head:
    """A new head of ``kind``: wrappers (LWS, LWS-Plus, tau-norm) wrap the current linear head."""
    cls = HEADS.get(kind)
    if issubclass(cls, FrozenBaseHead):
        base = current.base if isinstance(current, FrozenBaseHead) else current
        return cls(base, **options)
    return cls.build(current.in_dim, current.num_classes, **options)


def check_stage_specs(stage: StageConfig) -> None:
    """Option names of the stage's loss and mixing specs (nothing is built), so that a typo in a
    later stage fails before stage 1 trains."""
    options = dict(stage.loss)
    name = str(options.pop("name", None))
    try:
        try:
            loss_class = LOSSES.get(name)
        except KeyError as err:  # the registry's message, with the closest name
            raise ConfigError(err.args[0]) from None
        check_loss_options(name, options)
        if stage.mixing:
            check_mixing(stage.mixing)
            if loss_class.uses_features:
                raise ConfigError(f"loss {name!r} reads the encoder features of each image, which mixing does not "
                                  "provide: remove the stage's mixing")
    except ConfigError as err:
        raise ConfigError(f"stage {stage.name!r}: {err}") from None


def stage_head_kind(ctx: RunContext, stage: StageConfig) -> str:
    """The head a stage trains: its ``head``, else the last one an earlier stage set, else ``model.head``."""
    earlier = ctx.config.stages[: next((i for i, s in enumerate(ctx.config.stages) if s is stage), 0)]
    return stage.head or next((s.head for s in reversed(earlier) if s.head), ctx.config.model.head)


def check_head_fits(ctx: RunContext, stage: StageConfig) -> None:
    """Refuse head / setting pairs that would silently do something else:

    * ``max_norm`` on a head other than a linear one: MaxNorm caps the rows of ``fc.weight`` in
      place, and other heads' ``class_weight()`` is a fresh tensor (the cap would do nothing);
    * a loss on a head other than the one it is defined on (``Loss.head_required_by``): LDAM, also
      as DRW's base, needs the normalised-cosine head, its scale s = 30 being meant for cosine
      logits in [-1, 1] (Cao et al.), and would multiply raw logits."""
    kind = stage_head_kind(ctx, stage)
    if stage.max_norm is not None and not issubclass(HEADS.get(kind), LinearHead):
        raise ConfigError(
            f"stage {stage.name!r}: max_norm caps the rows of a linear head's weight; use head: linear "
            f"(the stage's head is {kind!r}), or remove max_norm"
        )
    loss = stage.loss.get("name")
    required = LOSSES.get(loss).head_required_by(stage.loss) if loss else None
    if required is not None and kind != required:
        raise ConfigError(
            f"stage {stage.name!r}: loss {loss!r} is defined on the {required} head; use head: {required} "
            f"(the stage's head is {kind!r})"
        )


def build_stage_loss(ctx: RunContext, spec: dict[str, Any]) -> nn.Module:
    """The stage's loss ``{name: ..., **options}`` on the run's device, given the training counts
    (and the current head, for losses such as IWB's that read the classifier weights), drawing
    from the run's device generator."""
    options = dict(spec)
    name = options.pop("name")
    from ..losses import LOSSES

    if "head" in inspect.signature(LOSSES.get(name)).parameters:
        options["head"] = ctx.model.head
    loss = build_loss(name, class_counts=ctx.class_counts.tolist(), **options).to(ctx.runtime.device)
    set_generator(loss, ctx.rng.torch)
    return loss


def _mixer(ctx: RunContext, spec: dict[str, Any] | None, generator: torch.Generator | None = None):
    """The stage's mixing (``data.mixing.MIXING``) as ``mixer(x, y)`` drawing from ``generator``, or
    None without one."""
    return build_mixer(spec, lambda: ctx.counts_tensor(), generator)


def stage_epochs(stage: StageConfig, num_items: int) -> int:
    """The stage's epochs: ``stage.epochs``, or for an iteration-based stage the sampler epochs that
    ``stage.iterations`` steps span (the last one cut short)."""
    if stage.iterations:
        return epochs_for_iterations(stage.iterations, steps_per_epoch(num_items, stage.batch_size))
    return stage.epochs


def max_norm_cap(state: dict[str, Any], weight: torch.Tensor, spec: dict[str, Any]) -> MaxNorm:
    """The stage's MaxNorm: thresholds from the head's initial row norms (``spec``), kept in the
    stage's ``state`` as ``max_norm_threshold`` so that a resumed stage caps at the same ones."""
    saved = state.get("max_norm_threshold")
    cap = MaxNorm(saved).to(weight.device) if saved is not None else MaxNorm.from_initial_norms(weight, **spec)
    state["max_norm_threshold"] = cap.threshold.tolist()
    return cap


def make_plan(
    ctx: RunContext,
    stage: StageConfig,
    source,
    compute_loss,
    trained: nn.Module,
    frozen: nn.Module | None,
    loss_fn: nn.Module,
    hooks: list[Any] | None = None,
    post_step: list[Callable[[], None]] | None = None,
    epochs: int | None = None,
) -> StagePlan:
    """The :class:`StagePlan` of the run's one :class:`Member`, which trains ``trained``'s
    parameters (``frozen`` stays in eval mode) for ``epochs`` (default ``stage.epochs``;
    :func:`stage_epochs` for iteration-based stages), drawing from ``ctx.rng``.

    ``hooks`` default to ``[loss_fn]``; a loss may declare ``graph_safe = False`` to run eagerly, a
    source a ``graph_unsafe_reason`` (e.g. a :class:`LoaderSource`).
    """
    named = [(n, p) for n, p in trained.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError(f"stage {stage.name!r} has no trainable parameters ({type(trained).__name__})")
    source_reason = getattr(source, "graph_unsafe_reason", None)
    member = Member(
        source=source,
        named_params=named,
        compute_loss=compute_loss,
        train_modules=[trained],
        frozen_modules=[frozen] if frozen is not None else [],
        hooks=hooks if hooks is not None else [loss_fn],
        post_step=post_step or [],
        generators=ctx.rng.graph_generators(),
        graph_safe=source_reason is None and getattr(loss_fn, "graph_safe", True),
        graph_unsafe_reason=source_reason or f"loss {stage.loss['name']!r} is not CUDA-graph safe",
    )
    return StagePlan(
        name=stage.name,
        epochs=epochs if epochs is not None else stage.epochs,
        members=[member],
        optimizer=stage.optimizer,
        schedule=stage.schedule,
        max_steps=stage.iterations,
    )


@STAGE_KINDS.register("supervised")
class SupervisedStage(StageKind):
    """Gradient-descent training on real data: the whole network, or the head on a frozen encoder."""

    def check(self, ctx: RunContext, stage: StageConfig) -> None:
        super().check(ctx, stage)
        if stage.shift_bn and (stage.train != "head" or stage.features != "online"):
            raise ConfigError(
                f"stage {stage.name!r}: shift_bn re-estimates the frozen encoder's BatchNorm statistics "
                "on the stage's own batches; it needs train: head and features: online"
            )
        check_head_fits(ctx, stage)
        if not (stage.train == "head" and stage.features == "cached"):  # the stage augments its images
            try:
                name, options = augment_spec(stage.augment)
                build_augment(stage.augment, torch.device("cpu"))  # values too (e.g. magnitude, policy)
            except ConfigError as err:
                raise ConfigError(f"stage {stage.name!r}: {err}") from None
            if isinstance(ctx.splits["train"][0], FileSplit):
                if options:
                    raise ConfigError(
                        f"stage {stage.name!r}: augment options apply to in-memory images and this run streams its "
                        f"images from disk: give the augment by name (augment: {name})"
                    )
                try:
                    file_transforms(name)
                except ConfigError as err:
                    raise ConfigError(f"stage {stage.name!r}: {err}") from None

    def training_data(self, ctx: RunContext, stage: StageConfig, cached: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage's training inputs and labels (subclasses may select a subset)."""
        inputs, labels = ctx.splits["train"]
        return (ctx.features("train") if cached else inputs), labels

    def logit_offset(self, ctx: RunContext, stage: StageConfig) -> torch.Tensor | None:
        """A constant ``[C]`` added to the logits before the loss (e.g. −inf on excluded classes)."""
        return None

    def build(self, ctx: RunContext, stage: StageConfig) -> StagePlan:
        model, runtime = ctx.model, ctx.runtime
        loss_fn = build_stage_loss(ctx, stage.loss)
        mixer = _mixer(ctx, stage.mixing, ctx.rng.torch)
        strategy = build_sampler(stage.sampler["name"], **{k: v for k, v in stage.sampler.items() if k != "name"})
        head_only = stage.train == "head"
        cached = head_only and stage.features == "cached"
        inputs, labels = self.training_data(ctx, stage, cached)
        offset = self.logit_offset(ctx, stage)
        epochs = stage_epochs(stage, len(labels))
        if isinstance(inputs, FileSplit):  # images streamed from disk
            source = LoaderSource(
                inputs, strategy, stage.batch_size, epochs, runtime, augment_spec(stage.augment)[0],
                ctx.dataset.mean, ctx.dataset.std, generator=ctx.rng.cpu,
            )
        else:
            source = DeviceSource(
                inputs,
                labels,
                ctx.dataset.num_classes,
                strategy,
                stage.batch_size,
                epochs,
                augment=None if cached else build_augment(stage.augment, runtime.device, ctx.rng.torch),
                mean=ctx.dataset.mean,
                std=ctx.dataset.std,
                channels_last=runtime.channels_last,
                world=runtime.world,
                generator=ctx.rng.torch,
            )
        encoder = model.encoder
        trained_encoder = encoder if head_only else runtime.compiled(encoder)

        def encode(x: torch.Tensor) -> torch.Tensor:
            if cached:
                return x
            if head_only:
                with torch.no_grad():
                    return encoder(x)
            return trained_encoder(x)

        def head_loss(feats: torch.Tensor, y: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
            """The loss and logits of the head on ``feats`` (of the mixed ``batch``, None: no mixing)."""
            logits = model.head(feats)
            if offset is not None:
                logits = logits + offset
            if batch is not None:
                return mixed_loss(loss_fn, logits, batch), logits
            if getattr(loss_fn, "uses_features", False):
                return loss_fn(logits, y, features=feats), logits
            return loss_fn(logits, y), logits

        def compute_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            batch = mixer(x, y) if mixer is not None else None
            return head_loss(encode(x if batch is None else batch.x), y, batch)

        post_step = []
        if stage.max_norm is not None:
            weight = model.head.class_weight()
            cap = max_norm_cap(self.state, weight, stage.max_norm)
            post_step.append(lambda: cap.apply_(weight))
        # shift_bn (MiSLAS's "shift learning on BN"): the frozen encoder runs in train mode, so its
        # BatchNorm running statistics follow the stage's (e.g. class-balanced) batches; no gradients.
        plan = make_plan(
            ctx,
            stage,
            source,
            compute_loss,
            trained=model.head if head_only else model,
            frozen=encoder if head_only and not stage.shift_bn else None,
            loss_fn=loss_fn,
            post_step=post_step,
            epochs=epochs,
        )
        member = plan.members[0]
        member.mixer, member.head_loss = mixer, head_loss  # what a stack runs around its shared encoder
        if stage.shift_bn:
            member.train_modules.append(encoder)
        plan.compiled = trained_encoder is not encoder
        return plan


@STAGE_KINDS.register("tau_norm")
class TauNormStage(StageKind):
    """Post-hoc tau-normalisation (Kang et al. 2020): W_c / ||W_c||^tau.

    ``options.tau``: a fixed tau; otherwise tau is chosen on the validation split from
    ``options.grid`` (default 0, 0.1, ..., 2.0): the tau of the best balanced validation accuracy,
    ties going to the smaller tau; it is recorded as ``chosen_tau`` (the stage's record). Without a validation
    split and without a fixed tau this is an error, raised before stage 1 trains: tau is never
    chosen on the test set.
    """

    trains = False

    def check(self, ctx: RunContext, stage: StageConfig) -> None:
        if "tau" not in stage.options and "val" not in ctx.splits:
            raise ConfigError(
                f"stage {stage.name!r}: tau_norm chooses tau on the validation split and this run has none: "
                "set data.val_per_class > 0 (e.g. data.val_per_class=20) or give a fixed tau (stages.N.options.tau=1.0)"
            )

    def prepare(self, ctx: RunContext, stage: StageConfig) -> None:
        ctx.model.replace_head(make_head("tau_norm", ctx.model.head, {}).to(ctx.runtime.device))

    def build(self, ctx: RunContext, stage: StageConfig) -> None:
        head: TauNormHead = ctx.model.head  # type: ignore[assignment]
        if "tau" in stage.options:
            head.set_tau(float(stage.options["tau"]))
            return None
        self.check(ctx, stage)
        grid = stage.options.get("grid", [round(0.1 * i, 1) for i in range(21)])
        feats, labels = ctx.features("val"), ctx.splits["val"][1]
        best = max(grid, key=lambda tau: (_set_tau_and_score(head, tau, feats, labels), -tau))  # ties: smaller tau
        head.set_tau(best)
        self.state["chosen_tau"] = best
        return None


def _set_tau_and_score(head: TauNormHead, tau: float, feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Balanced (mean per-class) validation accuracy of the tau-normalised head."""
    head.set_tau(tau)
    return float(per_class_accuracy(head, feats, labels, head.num_classes).mean())


@STAGE_KINDS.register("ncm")
class NCMStage(StageKind):
    """Nearest class mean classifier on the frozen encoder's features (Kang et al. 2020)."""

    trains = False

    def prepare(self, ctx: RunContext, stage: StageConfig) -> None:
        metric = stage.options.get("metric", "cosine")
        ctx.model.replace_head(NCMHead.build(ctx.model.head.in_dim, ctx.model.head.num_classes, metric=metric).to(ctx.runtime.device))

    def build(self, ctx: RunContext, stage: StageConfig) -> None:
        metric = stage.options.get("metric", "cosine")
        head = NCMHead.from_features(ctx.features("train"), ctx.splits["train"][1], ctx.dataset.num_classes, metric)
        ctx.model.replace_head(head.to(ctx.runtime.device))
        return None


class PosthocAdjustedHead(Head):
    """A head whose logits are shifted by −tau·log(pi) at inference (Menon et al. 2021)."""

    def __init__(self, base: Head, class_counts, tau: float = 1.0):
        super().__init__()
        self.base, self.in_dim, self.num_classes = base, base.in_dim, base.num_classes
        self.register_buffer("counts", torch.as_tensor(class_counts, dtype=torch.float32))
        self.tau = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return posthoc_logit_adjustment(self.base(x), self.counts, self.tau)

    def class_weight(self) -> torch.Tensor:
        return self.base.class_weight()


@STAGE_KINDS.register("posthoc_logit_adjust")
class PosthocLogitAdjustStage(StageKind):
    """Post-hoc logit adjustment of the trained model (Menon et al. 2021), ``options.tau`` (1.0)."""

    trains = False

    def prepare(self, ctx: RunContext, stage: StageConfig) -> None:
        tau = float(stage.options.get("tau", 1.0))
        ctx.model.replace_head(PosthocAdjustedHead(ctx.model.head, ctx.class_counts, tau).to(ctx.runtime.device))

    def build(self, ctx: RunContext, stage: StageConfig) -> None:
        return None


def stage_kind(name: str) -> StageKind:
    """An instance of the registered stage kind ``name`` (method packages register theirs)."""
    import longtail.methods  # noqa: F401  (registers the method-specific stage kinds)

    return STAGE_KINDS.get(name)()
