"""BWLM's two stage kinds: weights transfer on the head classes, then a review on a balanced set.

Paper (seed ``004``): Fan, Ma, Liu, Yuan, "BWLM: A Balanced Weight Learning Mechanism for
Long-Tailed Image Recognition", Appl. Sci. 14(1):454, 2024, Secs. 3.2-3.3 and 4.2.

- ``bwlm_head_classes`` (stage 1, "weights transfer", Eq. 3): the whole network trained with CE on
  D_stage1 = sum_{j<=m} D_j, the m largest classes only
  (:func:`longtail.losses.bfs.bwlm_head_classes`). The head keeps its C outputs; the other
  classes' logits get the offset ``EXCLUDED_LOGIT_OFFSET`` (-1e4) before the loss, so the softmax
  runs over the m head logits alone and the excluded rows of W get exactly zero loss gradient
  (weight decay still shrinks them; stage 2 replaces the head).
- ``bwlm_review`` (stage 2, Eq. 4): a frozen encoder and a new FC layer (recipes: ``head:
  linear``) trained on the data-balanced review set D^ of Eq. (2): each head class subsampled
  without replacement to n_{m+1} (the largest tail class), the tail classes kept whole
  (:func:`longtail.losses.bfs.review_set_indices`). The loss is the stage's (BFS for BWLM; CE,
  CB-focal, BS for the ablation rows); lambda of Eq. (14)-(17) is the stage's
  ``optimizer.weight_decay``.

Choices where the paper is silent (stage options, ``stages.N.options.NAME``, unless named
otherwise):

- ``EXCLUDED_LOGIT_OFFSET`` (a constant, not an option): -1e4 rather than -inf, because -inf turns
  into NaN wherever a log-probability meets a zero weight (label smoothing, sigmoid losses,
  mixing, ``0 * -inf`` in autograd); -1e4 underflows exp to exactly 0 and stays finite in bf16
  (-9984) and fp16, where -1e9 would overflow.
- ``num_head_classes`` (both kinds): m, default C // 2 (floor for odd C); ties in class size are
  broken by class id, largest first.
- ``review_seed`` (``bwlm_review``): seed of the head-class subsampling, default the run's
  ``seed``, so the review set varies across seeds and is reproducible for one (numpy
  ``default_rng(review_seed)``, classes drawn in rank order).
- ``resample_each_epoch`` (``bwlm_review``, default false): the paper defines D^ once (Eq. 2), so
  the default is one fixed review set; ``true`` (ours) re-draws the head-class subsample every
  epoch (epoch 0 uses the fixed set, epoch e >= 1 a seed derived from (review_seed, e)), copied
  in place with fixed shapes (graph-safe).
- ``loss_counts`` (``bwlm_review``): the n_j of class-count losses (CB, BS, BFS). ``"review"``
  (default): the counts of D^ itself, the label prior stage 2 actually trains on; ``"full"``: the
  counts of the whole training set D (n_j as defined in Sec. 3.1), which on D^ corrects the prior
  twice (a bias-only Balanced Softmax model on a balanced 53/53 set with counts [600, 53] settles
  at b_0 - b_1 = log(53/600) and never predicts the head class; ``tests/test_bwlm_review.py``).
- Both kinds validate their options in ``check``, before stage 1 trains, so a typo in a stage-2
  option does not surface only after the 320-epoch stage 1.
- Stage 2 reads cached encoder features (the paper mentions no stage-2 augmentation);
  ``features: online`` with ``augment: crop_flip`` re-runs the frozen encoder on augmented images
  instead. Schedule and weight-decay values are recipe matters: ``src/longtail/recipes/bwlm.yaml``.

Recorded measurements of these options: docs/method_notes.md.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..config import StageConfig
from ..data.files import FileSplit
from ..engine.stages import STAGE_KINDS, RunContext, SupervisedStage
from ..engine.trainer import StagePlan
from ..errors import ConfigError
from ..losses.bfs import bwlm_head_classes, review_set_indices
from ..registry import closest

EXCLUDED_LOGIT_OFFSET = -1.0e4
LOSS_COUNTS = ("review", "full")

HEAD_CLASSES_OPTIONS = ("num_head_classes",)
REVIEW_OPTIONS = ("num_head_classes", "review_seed", "resample_each_epoch", "loss_counts")


def _check_options(stage: StageConfig, valid: tuple[str, ...]) -> None:
    for key in stage.options:
        if key not in valid:
            raise ConfigError(
                f"stage {stage.name!r} ({stage.kind}): unknown option {key!r}{closest(key, valid)}; "
                f"valid: {', '.join(valid)}"
            )


def _num_head_classes(stage: StageConfig) -> int | None:
    value = stage.options.get("num_head_classes")
    return None if value is None else int(value)


def _loss_counts(stage: StageConfig) -> str:
    mode = stage.options.get("loss_counts", "review")
    if mode not in LOSS_COUNTS:
        raise ConfigError(
            f"stage {stage.name!r}: options.loss_counts {mode!r}{closest(str(mode), LOSS_COUNTS)} "
            f"is not one of {', '.join(LOSS_COUNTS)} (review: the review set's own counts, the default; "
            "full: the whole training set's)"
        )
    return mode


@STAGE_KINDS.register("bwlm_head_classes")
class BWLMHeadClassesStage(SupervisedStage):
    """BWLM stage 1: train on the m = C // 2 largest classes only, CE over their logits."""

    def check(self, ctx: RunContext, stage: StageConfig) -> None:
        super().check(ctx, stage)
        _check_options(stage, HEAD_CLASSES_OPTIONS)
        bwlm_head_classes(ctx.class_counts, _num_head_classes(stage))  # m in [1, C - 1]

    def head_classes(self, ctx: RunContext, stage: StageConfig) -> np.ndarray:
        _check_options(stage, HEAD_CLASSES_OPTIONS)
        head = bwlm_head_classes(ctx.class_counts, _num_head_classes(stage))
        self.state["head_classes_used"] = sorted(int(c) for c in head)
        return head

    def training_data(self, ctx: RunContext, stage: StageConfig, cached: bool) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = super().training_data(ctx, stage, cached)
        head = torch.as_tensor(self.head_classes(ctx, stage), device=labels.device)
        keep = torch.isin(labels, head).nonzero().squeeze(1)  # build time: a host sync is fine
        return inputs.index_select(0, keep), labels.index_select(0, keep)

    def logit_offset(self, ctx: RunContext, stage: StageConfig) -> torch.Tensor:
        num_classes = ctx.dataset.num_classes
        offset = torch.full((num_classes,), EXCLUDED_LOGIT_OFFSET, device=ctx.runtime.device)
        head = torch.as_tensor(self.head_classes(ctx, stage), device=ctx.runtime.device)
        return offset.index_fill_(0, head, 0.0)


class ResamplingSource:
    """Wraps a :class:`DeviceSource` whose inputs are re-drawn in place at every epoch start.

    ``draw(epoch)`` gives the epoch's indices into ``full_inputs`` (same length, same label
    sequence every epoch); they are gathered into the wrapped source's own input buffer, so a
    captured CUDA graph keeps reading the right memory.
    """

    def __init__(self, source, full_inputs: torch.Tensor, draw: Callable[[int], torch.Tensor]):
        self.source, self.full_inputs, self.draw = source, full_inputs, draw

    def start_epoch(self, epoch: int) -> None:
        index = self.draw(epoch)
        torch.index_select(self.full_inputs, 0, index, out=self.source.inputs)
        self.source.start_epoch(epoch)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source.next()

    def __getattr__(self, name: str) -> Any:  # steps_per_epoch, batch_size, labels, ...
        return getattr(self.source, name)


def _epoch_seed(review_seed: int, epoch: int) -> int:
    if epoch == 0:
        return review_seed
    return int(np.random.SeedSequence([review_seed, epoch]).generate_state(1)[0])


@STAGE_KINDS.register("bwlm_review")
class BWLMReviewStage(SupervisedStage):
    """BWLM stage 2: the classifier trained on the data-balanced review set D^ (Eq. 2)."""

    def check(self, ctx: RunContext, stage: StageConfig) -> None:
        super().check(ctx, stage)
        _check_options(stage, REVIEW_OPTIONS)
        bwlm_head_classes(ctx.class_counts, _num_head_classes(stage))
        _loss_counts(stage)
        for earlier in ctx.config.stages:
            if earlier is stage:
                break
            if earlier.kind == "bwlm_head_classes" and _num_head_classes(earlier) != _num_head_classes(stage):
                raise ConfigError(
                    f"stage {stage.name!r}: options.num_head_classes ({_num_head_classes(stage)}) differs from stage "
                    f"{earlier.name!r}'s ({_num_head_classes(earlier)}); BWLM's m is one number for both stages "
                    "(Eq. 2-3): set both, or neither (default C // 2)"
                )
        streamed = isinstance(ctx.splits["train"][0], FileSplit)
        if stage.options.get("resample_each_epoch", False) and streamed and not (
            stage.train == "head" and stage.features == "cached"
        ):
            raise ConfigError(
                f"stage {stage.name!r}: options.resample_each_epoch re-draws in-memory inputs in place and this "
                "run streams its images from disk: set features: cached (train: head), or resample_each_epoch: false"
            )

    def review_indices(self, ctx: RunContext, stage: StageConfig, epoch: int = 0) -> np.ndarray:
        """Indices into the training split of D^, grouped by class (the label sequence is fixed)."""
        labels = ctx.splits["train"][1].cpu().numpy()
        seed = int(stage.options.get("review_seed", ctx.config.seed))
        counts = np.bincount(labels, minlength=ctx.dataset.num_classes)  # D's counts, always
        index = review_set_indices(labels, counts, _num_head_classes(stage), seed=_epoch_seed(seed, epoch))
        return index[np.argsort(labels[index], kind="stable")]

    def training_data(self, ctx: RunContext, stage: StageConfig, cached: bool) -> tuple[torch.Tensor, torch.Tensor]:
        _check_options(stage, REVIEW_OPTIONS)
        inputs, labels = super().training_data(ctx, stage, cached)
        index = self.review_indices(ctx, stage)
        counts = np.bincount(ctx.splits["train"][1].cpu().numpy()[index], minlength=ctx.dataset.num_classes)
        self.state["review_seed_used"] = int(stage.options.get("review_seed", ctx.config.seed))
        self.state["review_class_counts"] = counts.tolist()
        self._full_inputs = inputs
        device_index = torch.as_tensor(index, device=labels.device)
        return inputs.index_select(0, device_index), labels.index_select(0, device_index)

    def build(self, ctx: RunContext, stage: StageConfig) -> StagePlan:
        _check_options(stage, REVIEW_OPTIONS)
        if _loss_counts(stage) == "review":
            # The loss is built inside SupervisedStage.build from ctx.class_counts: hand it D^'s
            # counts for the duration of the build (evaluation keeps the full counts).
            saved = ctx.class_counts
            labels = ctx.splits["train"][1].cpu().numpy()
            ctx.class_counts = np.bincount(labels[self.review_indices(ctx, stage)], minlength=ctx.dataset.num_classes)
            try:
                plan = super().build(ctx, stage)
            finally:
                ctx.class_counts = saved
        else:
            plan = super().build(ctx, stage)
        if stage.options.get("resample_each_epoch", False):
            full, device = self._full_inputs, self._full_inputs.device

            def draw(epoch: int) -> torch.Tensor:
                return torch.as_tensor(self.review_indices(ctx, stage, epoch), device=device)

            member = plan.members[0]
            member.source = ResamplingSource(member.source, full, draw)
        return plan


__all__ = ["BWLMHeadClassesStage", "BWLMReviewStage", "ResamplingSource", "EXCLUDED_LOGIT_OFFSET"]
