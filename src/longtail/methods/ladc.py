"""LADC's stage 2 (stage kind ``ladc``): calibrated Gaussians for tail instances, then a classifier
trained on real head features and features drawn from them.

Paper (seed ``003``): Wang, Gao, Wang, Gao, Pei, Pan, Xu, "Label-Aware Distribution Calibration
for Long-tailed Classification" (AAAI 2022). Stage 1 (representation enhancement) is an ordinary
``supervised`` stage (Remix + RandAugment, 400 epochs; recipes ``ladc*``); this module is stage 2,
on the frozen encoder and its cached, unaugmented training features (``ctx.features("train")``):

1. Head / tail (``head_fraction``): the head classes are the smallest set of largest classes
   holding at least 60% of the training images
   (:func:`~longtail.features.calibration.head_tail_split`); the rest are tail classes.
2. Statistics of the head classes only, once per stage (Eq. 2-3, unbiased): μ_i and an exact
   square-root factor F_i with F_iᵀF_i = Σ_i
   (:class:`~longtail.features.statistics.FactoredStatistics`), so no ``D x D`` matrix is formed;
   the dense reference :meth:`LADCSampler.calibrate` builds them on demand.
3. Calibration of each tail instance x̂ (n_s = 1; Eq. 4-12): S = the ``m`` nearest head means,
   weights w_i (Eq. 6), μ0 = Σ w_i μ_i, Σ0 = Σ w_i² Σ_i + αI (Eq. 7), posterior
   μ' = β/(1+β)·μ0 + 1/(1+β)·x̂ and Σ' = β/(1+β)·Σ0 (Eq. 11-12)
   (:func:`~longtail.features.calibration.ladc_calibrate`; factored form
   :func:`~longtail.features.calibration.ladc_calibration_terms`).
4. Sampling (Eq. 13): each epoch draws ``samples_per_epoch`` labels, every training instance of
   class i weighted n_1 / n_i^τ (see ``sampling_level``;
   :func:`~longtail.features.calibration.class_sampling_probabilities`). A head-class draw takes
   a real feature of that class; a tail-class draw takes a random training instance of that class
   and a feature from its calibrated Gaussian. The epoch is generated on the device in
   ``start_epoch``, so the training steps read fixed-shape batches (CUDA-graph safe).
5. Classifier (Eq. 14): the stage's ``head`` (default ``lws_plus``, z_c = f_c·Φ_c(x) + g_c on the
   frozen stage-1 linear classifier; ``lws`` for LADC+LWS, ``linear`` for LADC+cRT, Table 9)
   trained with the stage's loss (CE).

Options (``stages[i].options``, default first). Choices where the paper is silent or ambiguous:

* ``calibration``: ``instance`` (the paper) | ``average`` (Table 8's LADC_Average: x̂ = the tail
  class mean, :func:`~longtail.features.calibration.ladc_average`) | ``dc`` (few-shot DC, Yang et
  al. 2021, head classes as base classes, :func:`~longtail.features.calibration.dc_calibrate`) |
  ``none`` (tail classes re-sampled from their real features: Eq. 13 without calibration, the
  "Sampling" ablation of Table 6).
* ``head_fraction``: 0.6 (the paper's head rule).
* ``m``: 2. The paper picks m from {2, 3} per dataset without saying which; we take 2.
* ``alpha``: 0.1, ``tau``: 1.2. The paper selects α in 0.1–0.2 and τ in 1.2–1.3 per dataset
  without giving the values; we take the lower ends.
* ``beta``: ``auto`` | ``val`` | a number; ``beta_grid``: 0.4, 0.7, 1.0, 1.3 (the paper's range
  0.4–1.3, its value not given). ``val`` trains the stage once per grid value from the same head
  and the run's generators' state, keeps the β with the best balanced validation accuracy (ties: the smaller β;
  never the test set; refused before stage 1 without a validation split) and trains the chosen
  one again; ``auto`` is ``val`` when the run has a validation split (``data.val_per_class > 0``)
  and otherwise ``BETA_WITHOUT_VAL`` = 0.4, the lower end as for α and τ (``dc`` and ``none`` do
  not use β). Classes without validation items cannot be scored: they are left out of the
  balanced accuracy and listed in the record's ``beta_val_classes_without_items``.
* ``weighting``: ``printed`` | ``inverse_distance``. Eq. 6 as printed,
  w_i = n_i‖μ_i − x̂‖² / Σ_j n_j‖μ_j − x̂‖², gives the farther of the m head classes the larger
  weight, against the text ("learn more from head classes that are more abundant and more
  similar"); the default keeps the equation, ``inverse_distance`` (w_i ∝ n_i / ‖μ_i − x̂‖²) is
  the reading that matches the text.
* ``sampling_level``: ``instance`` | ``class``. We read n_1/n_i^τ of Eq. 13 as a per-instance
  over-sampling factor, so class i is drawn with probability ∝ n_i^(1−τ) (τ = 1: class-balanced,
  τ = 0: instance sampling), as the text's "τ controls the balanced degree" implies; ``class`` is
  the literal class probability, which inverts and sharpens the training prior (IF 100, τ = 1.2:
  the rarest class drawn ~250 times as often as the largest) and is kept as a named option
  (recipe ``ladc_class_sampling``).
* ``dispersion``: ``identity`` (αI as printed in Eq. 7) | ``all`` (α on every entry, DC's code).
* ``alpha_scale``: ``absolute`` (α as given, the paper's form) | ``relative`` (α times the mean
  per-dimension variance of the head classes, so it means the same on features of any scale, e.g.
  unit-norm sentence embeddings; also applies to ``dc_alpha``).
* ``n_s``: 1 (the paper's sample size for x̂).
* ``dc_alpha``: 0.21, ``dc_dispersion``: ``all`` — DC's own settings for ``calibration: dc`` (its
  support size is ``m``).
* ``tukey_lambda``: 1 (no transform, as in LADC). Another value fits, calibrates and samples on
  Tukey-transformed features x^λ (DC's practice) and maps draws back with the inverse power;
  needs non-negative (post-ReLU) features.
* ``samples_per_epoch``: N, the size of the training split (the paper does not say).
* ``sampler``: ``factored`` | ``cholesky``. ``factored`` draws
  μ' + Σ_j √a_j F_{S_j}ᵀ ε_j + √d·ε, since Σ' = Σ_j a_j Σ_{S_j} + d·K (a_j = p·w_j², d = p·α,
  p = β/(n_s+β); a_j = 1/m, d = α for DC; K = I, or 11ᵀ with one scalar ε for ``dispersion: all``):
  exactly N(μ', Σ') with no Cholesky factorisation and no jitter, also for singular Σ_i
  (:func:`~longtail.features.gaussian.sample_factored_gaussians`). ``cholesky`` is the dense
  reference: one Cholesky factor per distinct tail row
  (:func:`~longtail.features.gaussian.sample_gaussians`, with its jitter where Σ' is singular).
* ``chunk_rows``: 1024 — rows calibrated at once by the ``cholesky`` sampler (bounds the
  ``rows × D × D`` memory).
* ``min_items``: 1 (the paper: every tail class is calibrated). A tail class with fewer training
  items draws its real items, as a head class does, instead of Gaussians placed by one or two
  instances.

Unstated stage-2 settings, set in the recipes: lr 0.1, batch size 128, weight decay 5e-4 ("for all
the experiments"), 30 epochs with lr ×0.1 at 10 and 20 (the paper's schedule).

Stage kind ``ladc`` requires ``train: head`` (the encoder is frozen) and cached features; the
stage's ``sampler`` is not used (Eq. 13 replaces it), ``mixing`` and ``max_norm`` are refused.
What was derived (head classes, tail instances, class probabilities, effective α, β and how it
was set) is the stage's state, recorded in ``results.json`` as ``stage_records[i]``. Recorded measurements of these
options: docs/method_notes.md.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import torch

from ..config import StageConfig
from ..engine.stages import (STAGE_KINDS, RunContext, StageKind, build_stage_loss, make_head, make_plan,
                             stage_epochs)
from ..engine.trainer import StagePlan, Trainer
from ..errors import ConfigError
from ..features.calibration import (
    class_sampling_probabilities,
    dc_calibrate,
    dc_calibration_terms,
    head_tail_split,
    ladc_calibrate,
    ladc_calibration_terms,
)
from ..features.gaussian import sample_factored_gaussians, sample_gaussians
from ..features.statistics import ClassStatistics, FactoredStatistics, inverse_tukey, tukey_transform
from ..registry import closest
from ..eval.metrics import per_class_accuracy

__all__ = ["LADCOptions", "FactoredGaussians", "LADCSampler", "CalibratedFeatureSource", "LADCStage"]

CALIBRATIONS = ("instance", "average", "dc", "none")
SAMPLERS = ("factored", "cholesky")
BETA_MODES = ("auto", "val")
BETA_GRID = (0.4, 0.7, 1.0, 1.3)  # the paper's range 0.4-1.3, evenly spaced
BETA_WITHOUT_VAL = 0.4  # beta: auto on a run without a validation split (module docstring)


@dataclass
class LADCOptions:
    """The ``ladc`` stage's options (module docstring). Paper values: ``head_fraction``, ``n_s``;
    ``m``, ``alpha``, ``tau`` are picks inside the paper's ranges, ``beta`` is chosen on the
    validation split inside its range (``auto``/``val``) or fixed; ``sampling_level`` is our
    documented reading of Eq. 13."""

    calibration: str = "instance"
    head_fraction: float = 0.6
    m: int = 2
    alpha: float = 0.1
    beta: float | str = "auto"
    beta_grid: tuple[float, ...] = BETA_GRID
    tau: float = 1.2
    weighting: str = "printed"
    dispersion: str = "identity"
    alpha_scale: str = "absolute"
    n_s: float = 1.0
    dc_alpha: float = 0.21
    dc_dispersion: str = "all"
    tukey_lambda: float = 1.0
    sampling_level: str = "instance"
    samples_per_epoch: int | None = None
    sampler: str = "factored"
    chunk_rows: int = 1024
    min_items: int = 1

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "LADCOptions":
        names = [f.name for f in fields(cls)]
        given = dict(options)
        for key in given:
            if key not in names:
                raise ConfigError(f"unknown ladc option {key!r}{closest(key, names)}; valid: {', '.join(names)}")
        opts = cls(**given)
        choices = {
            "calibration": CALIBRATIONS,
            "weighting": ("printed", "inverse_distance"),
            "dispersion": ("identity", "all"),
            "dc_dispersion": ("identity", "all"),
            "alpha_scale": ("absolute", "relative"),
            "sampling_level": ("instance", "class"),
            "sampler": SAMPLERS,
        }
        for key, allowed in choices.items():
            value = getattr(opts, key)
            if value not in allowed:
                raise ConfigError(f"ladc option {key}={value!r}{closest(str(value), allowed)} is not one of {list(allowed)}")
        if opts.m < 1:
            raise ConfigError(f"ladc option m must be >= 1, got {opts.m}")
        numbers = ["m", "alpha", "tau", "n_s", "dc_alpha", "head_fraction", "tukey_lambda"]
        if opts.beta not in BETA_MODES:
            numbers.append("beta")
        for key in numbers:
            value = getattr(opts, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                hint = " or 'auto' / 'val' (chosen on the validation split)" if key == "beta" else ""
                raise ConfigError(f"ladc option {key} must be a number{hint}, got {value!r}")
        for key in ("alpha", "dc_alpha") + (("beta",) if "beta" in numbers else ()):
            if getattr(opts, key) < 0:
                raise ConfigError(f"ladc option {key} must be >= 0, got {getattr(opts, key)}")
        grid = opts.beta_grid
        if (not isinstance(grid, (list, tuple)) or not grid
                or any(isinstance(b, bool) or not isinstance(b, (int, float)) or b < 0 for b in grid)):
            raise ConfigError(f"ladc option beta_grid must be a non-empty list of numbers >= 0, got {grid!r}")
        opts.beta_grid = tuple(float(b) for b in grid)
        if opts.beta == "val" and opts.calibration not in ("instance", "average"):
            raise ConfigError(f"ladc option beta=val chooses the beta of Eq. 11-12, which calibration "
                              f"{opts.calibration!r} does not use: give no beta, or calibration instance / average")
        if opts.n_s <= 0:
            raise ConfigError(f"ladc option n_s must be > 0, got {opts.n_s}")
        if isinstance(opts.min_items, bool) or not isinstance(opts.min_items, int) or opts.min_items < 1:
            raise ConfigError(f"ladc option min_items must be a whole number >= 1 (1: every tail class is "
                              f"calibrated, the paper), got {opts.min_items!r}")
        if opts.tukey_lambda < 0:
            raise ConfigError(f"ladc option tukey_lambda must be >= 0, got {opts.tukey_lambda}")
        if opts.samples_per_epoch is not None and opts.samples_per_epoch < 1:
            raise ConfigError(f"ladc option samples_per_epoch must be >= 1, got {opts.samples_per_epoch}")
        return opts


# -------------------------------------------------------------------------------- Gaussians


@dataclass
class FactoredGaussians:
    """Gaussians ``N(means[r], Σ_j weights[r, j]·Σ_{classes[r, j]} + dispersion[r]·K)``, with ``K`` = I
    (``mode="identity"``) or the all-ones matrix (``mode="all"``) and ``Σ_c`` the head-class
    covariances (the arguments of :func:`~longtail.features.gaussian.sample_factored_gaussians`)."""

    means: torch.Tensor  # [R, D]
    classes: torch.Tensor  # [R, k] head-class ids (local, 0..H-1)
    weights: torch.Tensor  # [R, k] variance weights (0 on unused slots)
    dispersion: torch.Tensor  # [R] variance of the added isotropic / all-ones term
    mode: str


class LADCSampler:
    """Everything stage 2 draws from: the real features, the head/tail split, the class
    probabilities of Eq. 13 and the calibrated Gaussians of the tail rows. ``stats``
    (:class:`~longtail.features.statistics.FactoredStatistics`) holds the head classes only (row h =
    class ``head_classes[h]``); the Gaussians' class ids index it.

    Rows: ``calibration="instance"`` and ``"dc"``: one per tail training instance (in training-split
    order); ``"average"``: one per tail class (increasing class index); ``"none"``: no rows.
    Every draw comes from ``generator`` (on the features' device; the run's in a stage).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int, opts: LADCOptions,
                 generator: torch.Generator | None = None):
        if opts.beta == "val":
            raise ConfigError("ladc option beta=val is chosen by the ladc stage on the validation split; "
                              "give LADCSampler a number (or 'auto': BETA_WITHOUT_VAL)")
        if opts.beta == "auto":  # no validation split in sight: the fixed default
            opts = dataclasses.replace(opts, beta=BETA_WITHOUT_VAL)
        self.opts = opts
        self.generator = generator
        self.features = features.float()
        self.labels = labels.long()
        device = self.features.device
        self.num_classes = num_classes
        self.class_counts = torch.bincount(self.labels, minlength=num_classes)
        counts_cpu = self.class_counts.cpu()
        self.head_mask = head_tail_split(counts_cpu, opts.head_fraction).to(device)
        # tail classes drawn from calibrated Gaussians; a tail class of fewer than min_items items
        # draws its real items instead (the small-class fallback, module docstring)
        self.calibrated_mask = ~self.head_mask & (self.class_counts >= opts.min_items)
        eq13 = class_sampling_probabilities(counts_cpu, opts.tau)  # float64, Eq. 13 as printed
        if opts.sampling_level == "instance":  # each instance of class i weighted n_1/n_i^tau
            eq13 = eq13 * counts_cpu.to(torch.float64)
            eq13 = eq13 / eq13.sum()
        self.probabilities = eq13.to(device=device, dtype=torch.float32)
        self.sorted_indices = torch.sort(self.labels, stable=True).indices
        self.starts = torch.cumsum(self.class_counts, 0) - self.class_counts
        lam = opts.tukey_lambda
        space = self.features if lam == 1 else tukey_transform(self.features, lam)
        # Statistics (Eq. 2-3) of the head classes only, indexed 0..H-1 in class order, as exact
        # square-root factors (at most N x D floats; no [H, D, D] covariance is formed).
        self.head_classes = torch.nonzero(self.head_mask).flatten()
        local = torch.full((num_classes,), -1, dtype=torch.long, device=device)
        local[self.head_classes] = torch.arange(self.head_classes.shape[0], device=device)
        in_head = self.head_mask[self.labels]
        self.stats = FactoredStatistics.from_features(space[in_head], local[self.labels[in_head]], self.head_classes.shape[0])
        self.support_mask = torch.ones(self.head_classes.shape[0], dtype=torch.bool, device=device)
        self.variance_unit = float(self.stats.variances().mean()) if opts.alpha_scale == "relative" else 1.0
        self.alpha = opts.alpha * self.variance_unit
        self.dc_alpha = opts.dc_alpha * self.variance_unit

        tail_instances = torch.nonzero(~in_head).flatten()
        self.tail_classes = torch.nonzero(~self.head_mask).flatten()
        self.row_of_instance = torch.full((self.labels.shape[0],), -1, dtype=torch.long, device=device)
        self.row_of_class = torch.full((num_classes,), -1, dtype=torch.long, device=device)
        if opts.calibration in ("instance", "dc"):
            self.row_inputs = space[tail_instances]
            self.row_of_instance[tail_instances] = torch.arange(tail_instances.shape[0], device=device)
        elif opts.calibration == "average":  # x̂ = the tail class mean (Eq. 2)
            sums = torch.zeros(num_classes, space.shape[1], dtype=space.dtype, device=device).index_add_(0, self.labels, space)
            self.row_inputs = (sums / self.class_counts.unsqueeze(1).clamp(min=1).to(space.dtype))[self.tail_classes]
            self.row_of_class[self.tail_classes] = torch.arange(self.tail_classes.shape[0], device=device)
        else:
            self.row_inputs = space[:0]
        self.num_tail_instances = int(tail_instances.shape[0])
        self.gaussians = self._factored() if opts.calibration != "none" else None

    # ------------------------------------------------------------------ calibration
    def _factored(self) -> FactoredGaussians:
        o, x, s = self.opts, self.row_inputs, self.stats
        if o.calibration == "dc":
            means, classes, weights = dc_calibration_terms(x, s.means, self.support_mask, o.m)
            return FactoredGaussians(means, classes, weights, torch.full_like(means[:, 0], self.dc_alpha), o.dc_dispersion)
        means, classes, weights, spread = ladc_calibration_terms(
            x, s.means, s.counts, self.support_mask, o.m, self.alpha, o.beta, o.weighting, o.n_s
        )
        return FactoredGaussians(means, classes, weights, spread, o.dispersion)

    @cached_property
    def dense_stats(self) -> ClassStatistics:
        """The head-class statistics with dense ``[H, D, D]`` covariances (reference sampler, tests)."""
        return self.stats.dense()

    def calibrate(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(means, covs)`` of ``rows`` from the shared calibration functions (the reference);
        ``"average"`` is ``ladc_calibrate`` of the tail class means, i.e. ``ladc_average``."""
        o, stats = self.opts, self.dense_stats
        if o.calibration in ("instance", "average"):
            return ladc_calibrate(self.row_inputs[rows], stats, self.support_mask, o.m, self.alpha, o.beta,
                                  o.weighting, o.n_s, o.dispersion)
        if o.calibration == "dc":
            return dc_calibrate(self.row_inputs[rows], stats, self.support_mask, o.m, self.dc_alpha, o.dc_dispersion)
        raise ConfigError("calibration 'none' has no Gaussians")

    # ------------------------------------------------------------------ drawing
    def generate(self, rows: torch.Tensor) -> torch.Tensor:
        """One generated feature per entry of ``rows`` (Gaussian row ids), on the encoder's scale."""
        if rows.numel() == 0:
            return self.features.new_zeros(0, self.features.shape[1])
        unique, inverse = torch.unique(rows, return_inverse=True)
        counts = torch.bincount(inverse, minlength=unique.shape[0])
        if self.opts.sampler == "factored":
            g = self.gaussians
            drawn, _ = sample_factored_gaussians(g.means[unique], g.classes[unique], g.weights[unique], self.stats.factors,
                                                 counts, g.dispersion[unique], g.mode,
                                                 generator=self.generator)
        else:
            parts = []
            for start in range(0, unique.shape[0], self.opts.chunk_rows):
                means, covs = self.calibrate(unique[start : start + self.opts.chunk_rows])
                parts.append(sample_gaussians(means, covs, counts[start : start + self.opts.chunk_rows],
                                              generator=self.generator)[0])
            drawn = torch.cat(parts)
        z = torch.empty_like(drawn)  # drawn is grouped by row, in row order
        z[torch.argsort(inverse, stable=True)] = drawn
        return inverse_tukey(z, self.opts.tukey_lambda).to(self.features.dtype)

    def draw_epoch(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(features [S, D], labels [S], generated [S] bool)`` for one epoch (eager, on the device)."""
        classes = torch.multinomial(self.probabilities, num_samples, replacement=True, generator=self.generator)
        n = self.class_counts[classes]
        u = torch.rand(num_samples, generator=self.generator, device=classes.device, dtype=torch.float64)
        offsets = torch.minimum((u * n).long(), n - 1)
        instances = self.sorted_indices[self.starts[classes] + offsets]
        x = self.features[instances].clone()
        generated = self.calibrated_mask[classes] if self.gaussians is not None else torch.zeros_like(classes, dtype=torch.bool)
        if self.gaussians is not None:
            picks = torch.nonzero(generated).flatten()
            if self.opts.calibration == "average":
                rows = self.row_of_class[classes[picks]]
            else:
                rows = self.row_of_instance[instances[picks]]
            x[picks] = self.generate(rows)
        return x, classes, generated

    def record(self) -> dict[str, Any]:
        return {
            "head_classes": torch.nonzero(self.head_mask).flatten().tolist(),
            "tail_classes": self.tail_classes.tolist(),
            "uncalibrated_tail_classes": torch.nonzero(~self.head_mask & ~self.calibrated_mask).flatten().tolist(),
            "num_tail_instances": self.num_tail_instances,
            "class_probabilities": [round(p, 6) for p in self.probabilities.tolist()],
            "alpha_effective": self.alpha,
            "dc_alpha_effective": self.dc_alpha,
            "variance_unit": self.variance_unit,
        }


# -------------------------------------------------------------------------------- source


class CalibratedFeatureSource:
    """Stage-2 batches: an epoch of real head-class features and generated tail-class features,
    drawn once per epoch (eager), served as fixed-shape batches (graph-safe ``next``)."""

    def __init__(self, sampler: LADCSampler, batch_size: int, samples_per_epoch: int):
        self.sampler = sampler
        self.batch_size = min(batch_size, samples_per_epoch)
        self.steps_per_epoch = math.ceil(samples_per_epoch / self.batch_size)
        feats = sampler.features
        self.dim = feats.shape[1]
        self.epoch_x = torch.zeros(self.steps_per_epoch, self.batch_size, self.dim, dtype=feats.dtype, device=feats.device)
        self.epoch_y = torch.zeros(self.steps_per_epoch, self.batch_size, dtype=torch.long, device=feats.device)
        self.cursor = torch.zeros(1, dtype=torch.long, device=feats.device)
        self.last_generated: torch.Tensor | None = None

    def start_epoch(self, epoch: int) -> None:
        x, y, generated = self.sampler.draw_epoch(self.steps_per_epoch * self.batch_size)
        self.epoch_x.copy_(x.view_as(self.epoch_x))
        self.epoch_y.copy_(y.view_as(self.epoch_y))
        self.last_generated = generated
        self.cursor.zero_()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.epoch_x.index_select(0, self.cursor).view(self.batch_size, self.dim)
        y = self.epoch_y.index_select(0, self.cursor).view(self.batch_size)
        self.cursor.add_(1)
        return x, y


# -------------------------------------------------------------------------------- stage kind


@STAGE_KINDS.register("ladc")
class LADCStage(StageKind):
    """LADC's stage 2 (module docstring): frozen encoder, calibrated tail features, LWS-Plus head."""

    default_head = "lws_plus"

    def check(self, ctx: RunContext, stage: StageConfig) -> None:
        """Settings this kind cannot run with, refused before stage 1 trains."""
        super().check(ctx, stage)
        if stage.train != "head":
            raise ConfigError(f"stage {stage.name!r} (kind ladc) trains the classifier on the frozen encoder: set train: head")
        if stage.features != "cached":
            raise ConfigError(f"stage {stage.name!r} (kind ladc) works on cached features: set features: cached")
        if stage.mixing or stage.max_norm:
            raise ConfigError(f"stage {stage.name!r} (kind ladc) supports neither mixing nor max_norm: "
                              "remove them from the stage")
        opts = LADCOptions.from_options(stage.options)  # a typo fails here, not after stage 1
        if opts.beta == "val" and "val" not in ctx.splits:
            raise ConfigError(
                f"stage {stage.name!r} (kind ladc): beta: val chooses beta on the validation split and this run has "
                "none: set data.val_per_class > 0 (e.g. data.val_per_class=20), or give beta: auto or a number"
            )

    def prepare(self, ctx: RunContext, stage: StageConfig) -> None:
        self.check(ctx, stage)
        head = make_head(stage.head or self.default_head, ctx.model.head, stage.head_options)
        ctx.model.replace_head(head.to(ctx.runtime.device))
        ctx.model.encoder.requires_grad_(False)

    def build(self, ctx: RunContext, stage: StageConfig) -> StagePlan:
        opts = LADCOptions.from_options(stage.options)
        beta, choice = self.resolve_beta(ctx, stage, opts)
        plan, sampler = self._plan(ctx, stage, dataclasses.replace(opts, beta=beta))
        self.state.update(sampler.record(), **choice)
        return plan

    def resolve_beta(self, ctx: RunContext, stage: StageConfig, opts: LADCOptions) -> tuple[float, dict[str, Any]]:
        """β of Eq. 11-12 and how it was set (``record``): the number given; for ``val`` (and ``auto``
        on a run with a validation split) the grid value whose stage-2 classifier has the best
        balanced validation accuracy (ties: the smaller β); ``auto`` without one, BETA_WITHOUT_VAL.

        Each candidate trains the stage from the same head and the same state of the run's generators
        (``ctx.rng``), restored afterwards, so the stage then trains exactly the chosen candidate's
        classifier again. A resumed run reuses the β its record holds instead of choosing again."""
        if opts.beta not in BETA_MODES:
            return float(opts.beta), {"beta": float(opts.beta), "beta_source": "given"}
        if opts.calibration not in ("instance", "average"):  # no Eq. 11-12: beta is not used
            return BETA_WITHOUT_VAL, {"beta": None, "beta_source": f"unused (calibration {opts.calibration})"}
        if opts.beta == "auto" and "val" not in ctx.splits:
            return BETA_WITHOUT_VAL, {"beta": BETA_WITHOUT_VAL, "beta_source": "fixed (no validation split)"}
        saved = self.state
        if saved.get("beta_source") == "validation":  # set when the stage first ran: a resume keeps it
            return float(saved["beta"]), {k: saved.get(k) for k in ("beta", "beta_source", "beta_val_accuracy",
                                                                    "beta_val_classes_without_items")}
        head = ctx.model.head
        initial = copy.deepcopy(head.state_dict())
        rng = ctx.rng.state_dict()
        feats, labels = ctx.features("val"), ctx.splits["val"][1]
        present = torch.bincount(labels, minlength=ctx.dataset.num_classes) > 0
        unseen = torch.nonzero(~present).flatten().tolist()
        if unseen:
            warnings.warn(f"stage {stage.name!r} (ladc): beta is chosen on a validation split without items of "
                          f"{len(unseen)} classes {unseen[:20]}: their accuracy cannot count in the choice", stacklevel=2)
        scores: dict[float, float] = {}
        for beta in opts.beta_grid:
            head.load_state_dict(initial)
            ctx.rng.load_state_dict(rng)
            plan, _ = self._plan(ctx, stage, dataclasses.replace(opts, beta=beta))
            Trainer(plan, ctx.runtime, progress=False, divergence_factor=ctx.config.engine.divergence_factor).fit()
            scores[beta] = float(per_class_accuracy(head, feats, labels, ctx.dataset.num_classes)[present].mean())
        head.load_state_dict(initial)
        ctx.rng.load_state_dict(rng)
        best = max(opts.beta_grid, key=lambda b: (scores[b], -b))
        return best, {"beta": best, "beta_source": "validation",
                      "beta_val_accuracy": {str(b): round(100 * v, 4) for b, v in scores.items()},
                      "beta_val_classes_without_items": unseen}

    def _plan(self, ctx: RunContext, stage: StageConfig, opts: LADCOptions) -> tuple[StagePlan, LADCSampler]:
        """The stage's plan for a resolved β (``opts.beta`` a number)."""
        model = ctx.model
        features = ctx.features("train")
        labels = ctx.splits["train"][1]
        sampler = LADCSampler(features, labels, ctx.dataset.num_classes, opts, ctx.rng.torch)
        samples = opts.samples_per_epoch or int(labels.shape[0])
        source = CalibratedFeatureSource(sampler, stage.batch_size, samples)
        epochs = stage_epochs(stage, samples)  # iteration-based: whole epochs of draws, the last one cut short
        loss_fn = build_stage_loss(ctx, stage.loss)
        head = model.head
        uses_features = getattr(loss_fn, "uses_features", False)

        def compute_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = head(x)
            loss = loss_fn(logits, y, features=x) if uses_features else loss_fn(logits, y)
            return loss, logits

        plan = make_plan(ctx, stage, source, compute_loss, trained=head, frozen=model.encoder, loss_fn=loss_fn,
                         epochs=epochs)
        return plan, sampler
