"""GLAG's stage 2 (stage kind ``glag_afg``): the Adaptive Feature Generator, after a stage 1 with
the Gradual Balanced Loss.

Paper (seed ``001``): Zhang & Xiang, "Long-Tailed Classification with Gradual Balanced Loss and
Adaptive Feature Generation". Stage 1 is a ``supervised`` stage with the registered loss
``graloss`` (:mod:`longtail.losses.gradual`, Eqs. 3-4; recipes ``graloss``, ``graloss_crt``,
``graloss_lws``, ``glag*``). Stage 2 (Sec. 4.2, Eqs. 5-11), defined here:

* the encoder is frozen; the head is an LWS head wrapping the stage-1 linear head (Fig. 2);
* real training features are extracted once, Tukey-transformed (x -> x^lambda) and summarised per
  class (mean, unbiased covariance; Eqs. 5-6);
* every epoch, each real feature x_i of a tail class gets a calibrated Gaussian (Eqs. 7-10,
  :func:`~longtail.features.calibration.glag_calibration_terms`; dense form
  :func:`~longtail.features.calibration.glag_calibrate`)::

      S     = the K nearest (||x_i - mu_j||) classes with more training samples than y_i
      w_j   = n_j / d_ij
      mu_i' = (1 - beta_y) x_i + beta_y sum_S w_j mu_j / sum_S w_j
      Sig_i'= (1 - beta_y)^2 Sigma_y + beta_y^2 sum_S w_j Sigma_j / sum_S w_j + gamma I

  and features are drawn from it on the device as
  ``mu_i' + (1 - b) F_y^T e_0 + b sum_S sqrt(w_j / sum_S w) F_j^T e_j + sqrt(gamma) e``, with
  independent standard normals and per-class factors ``F_c^T F_c = Sigma_c`` computed once per
  stage (:class:`~longtail.features.statistics.FactoredStatistics`,
  :func:`~longtail.features.gaussian.sample_factored_gaussians`): exact, also for singular
  Sigma_c, with no jitter and no ``D x D`` matrix per feature;
* the epoch's training set is balanced: every class gets ``target`` features; a tail class keeps
  its real features and is filled up with generated ones, a head class is filled up by re-drawing
  its own real features (with replacement), and all are shuffled together;
* loss (Eq. 11): ``CE(z, y) + alpha(T) * KD(stage-1 head -> LWS head)``, alpha(T) =
  s (c^{T/T_max} - 1) over the stage-2 epochs (the GraLoss schedule);
* beta (per tail class) is adapted after every epoch from the per-class validation accuracy
  (never the test set): ``beta_c <- clip(beta_c + step * sign(acc_c(now) - acc_c(previous)), 0, 1)``
  (:func:`~longtail.features.calibration.adapt_beta`); the first comparison is against the model
  at the start of stage 2 (LWS scales at 1).

Stage-1 recipes (``src/longtail/recipes``): the paper gives SGD 0.9, wd 5e-4, cosine, ResNet-32 and
BALMS' crop + flip but no CIFAR epochs, lr or batch size; we use 200 epochs, bs 128, lr 0.1, 5
warm-up epochs. Table 6's GraLoss + cRT / LWS (``graloss_crt``, ``graloss_lws``) replace only the
stage-1 loss; any recipe takes ``stages.0.loss={name: graloss}``.

Choices where the paper is silent or ambiguous (options of ``glag_afg``,
``stages.N.options.<name>``):

* ``head_split``: ``"fraction"`` (default, ``head_fraction`` 0.6) | ``"many"`` | ``"count"``. The
  paper never defines its head classes; the default is LADC's rule (GLAG builds on LADC), the most
  frequent classes holding 60% of the training images. ``"many"``: train count >
  ``eval.many_threshold``; ``"count"``: the ``num_head`` largest.
* ``tukey_lambda``: 0.5 (DC's value; the paper cites Tukey's ladder without a value; 1 switches
  the transform off). Eqs. 5-6 use raw features and Eqs. 7-8 transformed ones: we compute
  statistics, calibration and sampling all in the transformed space and map draws back with
  ``max(u, 0)^(1/lambda)`` (``exp(u) - 1e-6`` for lambda = 0, clamped at 0), so the head is
  trained and tested on the encoder's own feature space.
* ``target``: ``"max"`` (default: "up to the head-class count" = the largest class count) | an
  integer (every class that many features; larger head classes are subsampled each epoch). The
  gap of a tail class is spread evenly over its real features (``gap // n_c`` each, a random
  ``gap % n_c`` of them one more). "Mixed up with real training samples" is read as concatenated
  and shuffled into the same batches, not mixup.
* ``kd``: true (``false`` drops the term, Table 7 "no KD"); ``kd_on``: ``"samples"`` (default: KD
  on samples whose label is a head class, over all logits, tail samples contributing 0) |
  ``"logits"`` (every sample, both distributions restricted to the head-class logits);
  ``kd_temperature``: 2 (not given). The teacher is the frozen stage-1 linear head on the same
  features.
* ``kd_alpha``: ``{s: 1, c: 2, schedule: convex}`` ("the same as in GraLoss"), T the 0-based
  stage-2 epoch, T_max the stage's epochs.
* ``beta_init``: 0.6 (implementation details; the ablation text says 0.4); ``beta_step``: 0.05;
  ``beta_bounds``: [0, 1]; ``beta_tolerance``: 0 (accuracy changes of at most this much count as
  no change); ``adaptive_beta``: true (``false`` keeps beta fixed, the paper's "set beta to a
  certain number", and needs no validation split).
* Calibration: ``k`` 2 (the paper uses 2 or 3), ``gamma`` 0 (0 or 0.1), ``dispersion``
  ``"identity"`` (gamma I), ``own_covariance`` ``"class"`` (Sigma_i = covariance of x_i's class).
* ``chunk_elements``: 2^26 — the generation noise is drawn in blocks of at most this many
  elements; per epoch one ``[m, r_c] @ [r_c, D]`` product per class (r_c = min(n_c, D)).
* Epoch memory: the balanced epoch is one fixed-shape device buffer of C x target x D float32
  (CUDA-graph safe); for a large C x target (iNaturalist 2018: about 67 GB at ``"max"``) an
  integer ``target`` must cap it.
* ``min_items``: 1 (the paper: every tail class generates). A tail class with fewer training items
  is filled by re-drawing its real features, as a head class is.
* A tail class without validation items cannot adapt its beta: it stays at ``beta_init`` and is
  named in ``classes_without_val`` (recorded, with a warning).
* The head: the paper's figure shows LWS; ``head: lws_plus`` (LADC's LWS-Plus, f_c·z_c + g_c) adds
  a per-class bias that can lift a class whose stage-1 logit is below the others almost everywhere
  (a class with one or two training items after GraLoss). The text configs use it; the image
  recipes keep the paper's LWS.

The stage's state (recorded in ``results.json`` as ``stage_records[i]`` and kept in the
checkpoints, from which a resumed run continues): ``head_classes``, ``target_count``, ``num_generated``, ``beta_history``
(beta of every class before the first epoch and after each update), ``val_balanced_acc_history``
(mean per-class validation accuracy after each epoch), ``tail_val_acc_history`` (the same over
tail classes) and ``val_acc_last``. Recorded measurements of these options:
docs/method_notes.md.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from ..config import StageConfig
from ..data.sampling import build_sampler
from ..engine.sources import DeviceSource
from ..engine.stages import STAGE_KINDS, RunContext, StageKind, build_stage_loss, make_plan
from ..engine.trainer import StagePlan
from ..errors import ConfigError, DataError
from ..eval.metrics import per_class_accuracy
from ..features.calibration import adapt_beta, glag_calibrate, glag_calibration_terms, head_tail_split, init_beta
from ..features.gaussian import sample_factored_gaussians
from ..features.statistics import FactoredStatistics, inverse_tukey, tukey_transform
from ..losses.distillation import DistillationLoss
from ..losses.gradual import gradual_alpha
from ..models.heads import FrozenBaseHead
from ..registry import closest

__all__ = [
    "DEFAULTS",
    "glag_head_mask",
    "AdaptiveFeatureGenerator",
    "AFGSource",
    "GLAGStage2Loss",
    "BetaAdapter",
    "GLAGAFGStage",
]

DEFAULTS: dict[str, Any] = {
    "tukey_lambda": 0.5,
    "k": 2,
    "gamma": 0.0,
    "dispersion": "identity",
    "own_covariance": "class",
    "beta_init": 0.6,
    "adaptive_beta": True,
    "beta_step": 0.05,
    "beta_bounds": [0.0, 1.0],
    "beta_tolerance": 0.0,
    "head_split": "fraction",
    "head_fraction": 0.6,
    "num_head": None,
    "target": "max",
    "kd": True,
    "kd_on": "samples",
    "kd_temperature": 2.0,
    "kd_alpha": {"s": 1.0, "c": 2.0, "schedule": "convex", "inclusive_end": False},
    "chunk_elements": 1 << 26,
    "min_items": 1,
}
HEAD_SPLITS = ("fraction", "many", "count")
KD_ON = ("samples", "logits")


def _options(stage: StageConfig) -> dict[str, Any]:
    """The stage's options merged over :data:`DEFAULTS`; unknown keys are errors."""
    allowed = set(DEFAULTS)
    for key in stage.options:
        if key not in allowed:
            raise ConfigError(
                f"stage {stage.name!r} (glag_afg): unknown option {key!r}{closest(key, allowed)}; "
                f"valid options: {', '.join(sorted(DEFAULTS))}"
            )
    opts = copy.deepcopy(DEFAULTS)
    for key, value in stage.options.items():
        if key == "kd_alpha":
            unknown = set(value) - set(DEFAULTS["kd_alpha"])
            if unknown:
                raise ConfigError(f"options.kd_alpha: unknown key(s) {sorted(unknown)}; valid: s, c, schedule, inclusive_end")
            opts["kd_alpha"].update(value)
        else:
            opts[key] = value
    if opts["head_split"] not in HEAD_SPLITS:
        raise ConfigError(f"options.head_split={opts['head_split']!r} is not one of {list(HEAD_SPLITS)}")
    if opts["kd_on"] not in KD_ON:
        raise ConfigError(f"options.kd_on={opts['kd_on']!r} is not one of {list(KD_ON)}")
    gradual_alpha(0, 1, **opts["kd_alpha"])  # validates s, c, schedule
    lo, hi = opts["beta_bounds"]
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"options.beta_bounds must satisfy 0 <= low <= high <= 1, got {opts['beta_bounds']}")
    if float(opts["beta_step"]) < 0:
        raise ConfigError(f"options.beta_step must be >= 0, got {opts['beta_step']}")
    if float(opts["tukey_lambda"]) < 0:
        raise ConfigError(f"options.tukey_lambda must be >= 0 (0.5 default, 1 = no transform), got {opts['tukey_lambda']}")
    if not lo <= float(opts["beta_init"]) <= hi:
        raise ConfigError(f"options.beta_init must lie within options.beta_bounds {opts['beta_bounds']}, got {opts['beta_init']}")
    if isinstance(opts["k"], bool) or not isinstance(opts["k"], int) or opts["k"] < 1:
        raise ConfigError(f"options.k (nearest richer classes) must be a positive integer (paper: 2 or 3), got {opts['k']!r}")
    if float(opts["gamma"]) < 0:
        raise ConfigError(f"options.gamma (added variance) must be >= 0 (paper: 0 or 0.1), got {opts['gamma']}")
    if not 0.0 < float(opts["head_fraction"]) <= 1.0:
        raise ConfigError(f"options.head_fraction must be in (0, 1], got {opts['head_fraction']}")
    if isinstance(opts["min_items"], bool) or not isinstance(opts["min_items"], int) or opts["min_items"] < 1:
        raise ConfigError(f"options.min_items must be a whole number >= 1 (1: every tail class generates, the paper), "
                          f"got {opts['min_items']!r}")
    if opts["head_split"] == "count" and not opts["num_head"]:
        raise ConfigError("options.head_split=count needs options.num_head (the number of head classes)")
    _check_generator_options(opts["target"], opts["dispersion"], opts["own_covariance"])
    if not float(opts["kd_temperature"]) > 0:
        raise ConfigError(f"options.kd_temperature must be > 0 (default 2), got {opts['kd_temperature']}")
    return opts


def _check_generator_options(target: Any, dispersion: str, own_covariance: str) -> None:
    """The generator's own settings (checked for the stage's pre-flight and by the generator)."""
    if target != "max" and (isinstance(target, bool) or not isinstance(target, (int, float)) or int(target) < 1):
        raise ConfigError(f"options.target must be 'max' or a positive integer, got {target!r}")
    if dispersion not in ("identity", "all"):
        raise ConfigError(f"options.dispersion must be 'identity' or 'all', got {dispersion!r}")
    if own_covariance not in ("class", "none"):
        raise ConfigError(f"options.own_covariance must be 'class' or 'none', got {own_covariance!r}")


# --------------------------------------------------------------------------------------------
# pieces


def glag_head_mask(
    class_counts,
    split: str = "fraction",
    head_fraction: float = 0.6,
    num_head: int | None = None,
    many_threshold: int = 100,
) -> torch.Tensor:
    """GLAG's head classes as a bool mask ``[C]`` (True = head; see the module docstring).

    ``"fraction"``: LADC's rule, the most frequent classes that together hold ``head_fraction``
    of the images; ``"many"``: count > ``many_threshold``; ``"count"``: the ``num_head`` most
    frequent classes (ties by lower index).
    """
    counts = torch.as_tensor(class_counts).flatten().long()
    if split == "fraction":
        return head_tail_split(counts, head_fraction)
    if split == "many":
        return counts > int(many_threshold)
    if split == "count":
        if num_head is None or not 0 <= int(num_head) <= counts.numel():
            raise ConfigError(f"head_split='count' needs options.num_head in 0..{counts.numel()}, got {num_head}")
        order = torch.argsort(-counts.double(), stable=True)
        mask = torch.zeros(counts.numel(), dtype=torch.bool)
        mask[order[: int(num_head)]] = True
        return mask
    raise ConfigError(f"head_split={split!r} is not one of {list(HEAD_SPLITS)}")


class AdaptiveFeatureGenerator:
    """The AFG's data side: statistics once, a balanced epoch feature set on demand.

    Args:
        features: real training features ``[N, D]`` (non-negative unless ``tukey_lambda=1``),
            on the device where generation runs.
        labels: ``[N]`` class labels.
        num_classes: C.
        head_mask: ``[C]`` bool, True for head classes.
        target: ``"max"`` (largest class count) or an int: features per class per epoch.
        tukey_lambda, k, gamma, dispersion, own_covariance: calibration (module docstring).
        chunk_elements: budget of one noise block of :func:`sample_factored_gaussians`.

    Layout of the epoch set (fixed, so a CUDA graph can read it): class c owns rows
    ``c*target .. (c+1)*target - 1``; :attr:`labels` and :attr:`is_generated` describe them.
    """

    def __init__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        head_mask: torch.Tensor,
        target: str | int = "max",
        tukey_lambda: float = 0.5,
        k: int = 2,
        gamma: float = 0.0,
        dispersion: str = "identity",
        own_covariance: str = "class",
        chunk_elements: int = 1 << 26,
        min_items: int = 1,
    ):
        if features.dim() != 2 or labels.shape != (features.shape[0],):
            raise DataError(f"features must be [N, D] with labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}")
        self.device = features.device
        self.features = features.float()
        self.labels_in = labels.to(self.device).long()
        self.num_classes = C = int(num_classes)
        self.dim = D = features.shape[1]
        self.head_mask = torch.as_tensor(head_mask, dtype=torch.bool).cpu()
        if self.head_mask.shape != (C,):
            raise DataError(f"head_mask must have {C} entries, got {tuple(self.head_mask.shape)}")
        counts = torch.bincount(self.labels_in, minlength=C).cpu()
        if bool((counts == 0).any()):
            empty = torch.nonzero(counts == 0).flatten().tolist()
            raise DataError(f"AFG needs at least one training feature per class; empty classes {empty[:20]}")
        self.counts = counts.tolist()
        _check_generator_options(target, dispersion, own_covariance)
        self.target = max(self.counts) if target == "max" else int(target)
        self.lam = float(tukey_lambda)
        self.k, self.gamma = int(k), float(gamma)
        self.dispersion, self.own_covariance = dispersion, own_covariance
        self.chunk_elements = int(chunk_elements)

        try:
            transformed = tukey_transform(self.features, self.lam) if self.lam != 1 else self.features
        except DataError as exc:
            raise DataError(f"{exc} (glag_afg: stages.N.options.tukey_lambda=1 skips the transform)") from None
        self.stats = FactoredStatistics.from_features(transformed, self.labels_in, C)
        order = torch.sort(self.labels_in, stable=True).indices
        self.class_index = list(torch.split(order, self.counts))  # real rows of each class

        T = self.target
        # classes filled with generated features; a tail class of fewer than min_items items is
        # filled by re-drawing its real features, as a head class is (the small-class fallback)
        self.tail_classes = [c for c in range(C) if not self.head_mask[c] and min_items <= self.counts[c] < T]
        self._generating = set(self.tail_classes)
        self.size = C * T
        self.labels = torch.arange(C, device=self.device).repeat_interleave(T)
        generated = torch.zeros(self.size, dtype=torch.bool)
        for c in self.tail_classes:
            generated[c * T + self.counts[c] : (c + 1) * T] = True
        self.is_generated = generated.to(self.device)
        self.generated_slots = torch.nonzero(generated).flatten().to(self.device)  # class order
        self.real_slots = torch.nonzero(~generated).flatten().to(self.device)  # class order
        self.num_generated = int(generated.sum())
        if self.tail_classes:
            rows = torch.cat([self.class_index[c] for c in self.tail_classes])
            self.tail_x = transformed[rows]
            self.tail_y = self.labels_in[rows]
        else:
            self.tail_x = transformed.new_zeros(0, D)
            self.tail_y = self.labels_in.new_zeros(0)

    # ---------------------------------------------------------------- per epoch (eager)
    def row_counts(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """How many features each tail row generates: the class gap spread evenly over its rows."""
        parts = []
        for c in self.tail_classes:
            n = self.counts[c]
            base, rem = divmod(self.target - n, n)
            ranks = torch.randperm(n, generator=generator, device=self.device)
            parts.append(base + (ranks < rem).long())
        if not parts:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        return torch.cat(parts)

    def calibrate(self, beta: torch.Tensor, start: int = 0, end: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense calibrated Gaussians ``(means, covs [M, D, D])`` (Tukey space) of tail rows
        ``start:end`` with per-class ``beta``: the reference that :meth:`generate` samples from."""
        end = self.tail_x.shape[0] if end is None else end
        return glag_calibrate(
            self.tail_x[start:end], self.tail_y[start:end], self.stats.dense(), beta.to(self.device),
            gamma=self.gamma, k=self.k, own_covariance=self.own_covariance, dispersion=self.dispersion,
        )

    def generate(
        self, beta: torch.Tensor, generator: torch.Generator | None = None, inverse: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated features ``[G, D]`` (class order, in the feature space unless
        ``inverse=False``) and their labels ``[G]``, G = :attr:`num_generated`."""
        counts = self.row_counts(generator)
        means, classes, weights = glag_calibration_terms(
            self.tail_x, self.tail_y, self.stats.means, self.stats.counts, beta.to(self.device),
            k=self.k, own_covariance=self.own_covariance,
        )
        out, _ = sample_factored_gaussians(
            means, classes, weights, self.stats.factors, counts, dispersion=self.gamma, mode=self.dispersion,
            generator=generator, chunk_elements=self.chunk_elements,
        )
        labels = self.tail_y.repeat_interleave(counts)
        if out.shape[0] != self.num_generated:
            raise RuntimeError(f"AFG generated {out.shape[0]} features, expected {self.num_generated}")
        return (inverse_tukey(out, self.lam) if inverse else out), labels

    def real_sources(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Indices into the real features for :attr:`real_slots`: all of a class's real features
        (a random ``target`` of them if it has more), head classes filled up by drawing their own
        real features with replacement."""
        T = self.target
        parts = []
        for c in range(self.num_classes):
            idx, n = self.class_index[c], self.counts[c]
            if n > T:
                parts.append(idx[torch.randperm(n, generator=generator, device=self.device)[:T]])
                continue
            parts.append(idx)
            if n < T and c not in self._generating:
                parts.append(idx[torch.randint(n, (T - n,), generator=generator, device=self.device)])
        return torch.cat(parts)

    @torch.no_grad()
    def fill(self, out: torch.Tensor, beta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Write this epoch's balanced feature set into ``out [C*target, D]`` in place."""
        if out.shape != (self.size, self.dim):
            raise DataError(f"out must be [{self.size}, {self.dim}], got {tuple(out.shape)}")
        out.index_copy_(0, self.real_slots, self.features.index_select(0, self.real_sources(generator)).to(out.dtype))
        if self.num_generated:
            samples, _ = self.generate(beta, generator)
            out.index_copy_(0, self.generated_slots, samples.to(out.dtype))
        return out


class AFGSource(DeviceSource):
    """A :class:`DeviceSource` over the AFG's epoch set: ``start_epoch`` regenerates the
    features in place (eager) with the current beta, then draws the epoch's order, both from
    ``generator``; ``next`` is the parent's (graph-safe)."""

    def __init__(self, afg: AdaptiveFeatureGenerator, state: "BetaAdapter", strategy, batch_size: int,
                 total_epochs: int, generator: torch.Generator | None = None):
        buffer = torch.zeros(afg.size, afg.dim, device=afg.device)
        super().__init__(buffer, afg.labels, afg.num_classes, strategy, batch_size, total_epochs, generator=generator)
        self.afg, self.state = afg, state

    def start_epoch(self, epoch: int) -> None:
        self.afg.fill(self.inputs, self.state.beta, self.generator)
        super().start_epoch(epoch)


class GLAGStage2Loss(nn.Module):
    """Eq. 11: ``CE(z, y) + alpha(T) * mean_b[ m_b * KD_tau(teacher(x_b) -> z_b) ]``.

    ``m_b`` = 1 for samples of head classes, 0 otherwise (``kd_on="samples"``); with
    ``kd_on="logits"`` m = 1 and both distributions are restricted to the head-class logits.
    ``alpha`` is a 0-dim buffer set in place per epoch (graph-safe); ``teacher=None`` is CE only.
    """

    def __init__(
        self,
        ce: nn.Module,
        teacher: nn.Module | None,
        head_mask: torch.Tensor,
        temperature: float = 2.0,
        kd_on: str = "samples",
    ):
        super().__init__()
        if kd_on not in KD_ON:
            raise ConfigError(f"kd_on={kd_on!r} is not one of {list(KD_ON)}")
        head_mask = torch.as_tensor(head_mask, dtype=torch.bool)
        self.ce = ce
        self._teacher = (teacher,)  # not a submodule: it belongs to the model
        self.kd_on = kd_on
        self.kd = DistillationLoss(temperature, class_subset=head_mask if kd_on == "logits" else None)
        self.register_buffer("alpha", torch.zeros(()))
        self.register_buffer("head_weight", head_mask.float())

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    @torch.no_grad()
    def set_alpha(self, value: float) -> None:
        self.alpha.fill_(value)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        loss = self.ce(logits, targets)
        if self.teacher is None:
            return loss
        with torch.no_grad():
            teacher_logits = self.teacher(features)
        per_sample = self.kd.per_sample(logits, teacher_logits)
        if self.kd_on == "samples":
            per_sample = per_sample * self.head_weight.index_select(0, targets)
        return loss + self.alpha * per_sample.mean()


class BetaAdapter:
    """Epoch hook of ``glag_afg``: alpha(T) for the KD term at the start of each epoch; after it,
    the per-class validation accuracy and the beta update of :func:`adapt_beta` (tail classes
    only), recorded in ``record`` (the stage's state)."""

    def __init__(
        self,
        beta: torch.Tensor,
        tail_mask: torch.Tensor,
        loss: GLAGStage2Loss | None = None,
        kd_alpha: dict[str, Any] | None = None,
        head: nn.Module | None = None,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
        adaptive: bool = True,
        step: float = 0.05,
        bounds: tuple[float, float] = (0.0, 1.0),
        tolerance: float = 0.0,
        prev_acc: torch.Tensor | None = None,
        record: dict[str, Any] | None = None,
    ):
        self.beta = beta
        self.tail_mask = torch.as_tensor(tail_mask, dtype=torch.bool, device=beta.device)
        self.loss, self.kd_alpha = loss, dict(kd_alpha or {})
        self.head, self.val = head, val
        self.adaptive, self.step, self.bounds, self.tolerance = adaptive, float(step), tuple(bounds), float(tolerance)
        self.prev_acc = prev_acc
        self.record = record if record is not None else {}
        self.record.setdefault("beta_history", [_rounded(beta)])

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        if self.loss is not None and self.loss.teacher is not None:
            self.loss.set_alpha(gradual_alpha(epoch, total_epochs, **self.kd_alpha))

    def update(self, acc_now: torch.Tensor) -> torch.Tensor:
        """Adapt beta from this epoch's per-class validation accuracy; record; return new beta."""
        if self.adaptive:
            new = adapt_beta(self.beta, acc_now, self.prev_acc, step=self.step, bounds=self.bounds,
                             classes=self.tail_mask, tolerance=self.tolerance)
            self.beta.copy_(new)
        self.prev_acc = acc_now.clone()
        rec = self.record
        rec["beta_history"].append(_rounded(self.beta))
        rec.setdefault("val_balanced_acc_history", []).append(round(100 * float(acc_now.mean()), 4))
        if bool(self.tail_mask.any()):
            rec.setdefault("tail_val_acc_history", []).append(round(100 * float(acc_now[self.tail_mask].mean()), 4))
        rec["val_acc_last"] = [float(a) for a in acc_now.tolist()]
        rec["beta_last"] = [float(b) for b in self.beta.tolist()]  # exact (float32 in a float): what a resume continues from
        return self.beta

    def on_epoch_end(self) -> None:
        if self.val is None:
            return
        feats, labels = self.val
        self.update(per_class_accuracy(self.head, feats, labels, self.beta.shape[0]))


def _rounded(t: torch.Tensor) -> list[float]:
    return [round(float(v), 6) for v in t.tolist()]


# --------------------------------------------------------------------------------------------
# the stage kind


@STAGE_KINDS.register("glag_afg")
class GLAGAFGStage(StageKind):
    """GLAG stage 2: LWS head on the frozen encoder, trained on real + AFG-generated features
    with CE + alpha(T)·KD on head classes, beta adapted on the validation split (module docstring).

    Stage fields used: ``head`` (``lws``; any head wrapping the stage-1 linear head), ``train:
    head``, ``features: cached``, ``epochs``, ``batch_size``, ``loss`` (the CE part, default
    ``ce``), ``sampler`` (order of the balanced epoch set, default ``instance``), ``optimizer``,
    ``schedule``; ``options``: see :data:`DEFAULTS`.
    """

    def check(self, ctx: RunContext, stage: StageConfig) -> dict[str, Any]:
        """Config checks that need no training (the runner runs them before stage 1)."""
        super().check(ctx, stage)
        opts = _options(stage)
        if stage.mixing or stage.max_norm:
            raise ConfigError(f"stage {stage.name!r} (glag_afg) supports neither mixing nor max_norm: remove them from the stage")
        if stage.train != "head":
            raise ConfigError(f"stage {stage.name!r} (glag_afg) trains the head on the frozen encoder: set train: head")
        if stage.features != "cached":
            raise ConfigError(f"stage {stage.name!r} (glag_afg) generates features from cached ones: set features: cached")
        if opts["adaptive_beta"] and ctx.config.data.val_per_class <= 0 and "val" not in ctx.splits:
            raise ConfigError(
                f"stage {stage.name!r} (glag_afg) adapts beta from validation accuracy and the run has no "
                "validation split: set data.val_per_class > 0 (e.g. data.val_per_class=20), or keep beta "
                f"fixed with stages.N.options.adaptive_beta=false (never the test set)"
            )
        if ctx.config.eval.select == "best_val":
            raise ConfigError(
                "eval.select=best_val selects among the epochs of the last 'supervised' stage and would "
                "discard the glag_afg stage; use eval.select=last"
            )
        return opts

    def prepare(self, ctx: RunContext, stage: StageConfig) -> None:
        self.check(ctx, stage)
        super().prepare(ctx, stage)
        if not isinstance(ctx.model.head, FrozenBaseHead):
            raise ConfigError(
                f"stage {stage.name!r} (glag_afg) needs a head that wraps the stage-1 linear head (the KD "
                f"teacher), got {type(ctx.model.head).__name__}: set head: lws"
            )

    def build(self, ctx: RunContext, stage: StageConfig) -> StagePlan:
        opts = self.check(ctx, stage)
        if opts["adaptive_beta"] and "val" not in ctx.splits:
            raise ConfigError("glag_afg: the dataset has no validation split; set data.val_per_class > 0")
        model, device = ctx.model, ctx.runtime.device
        head: FrozenBaseHead = model.head  # type: ignore[assignment]
        C = ctx.dataset.num_classes
        head_mask = glag_head_mask(
            ctx.class_counts, opts["head_split"], opts["head_fraction"], opts["num_head"], ctx.config.eval.many_threshold
        )
        feats, labels = ctx.features("train"), ctx.splits["train"][1]
        afg = AdaptiveFeatureGenerator(
            feats, labels, C, head_mask, target=opts["target"], tukey_lambda=opts["tukey_lambda"], k=opts["k"],
            gamma=opts["gamma"], dispersion=opts["dispersion"], own_covariance=opts["own_covariance"],
            chunk_elements=opts["chunk_elements"], min_items=opts["min_items"],
        )
        tail_mask = ~head_mask
        record = self.state
        record["head_classes"] = torch.nonzero(head_mask).flatten().tolist()
        record["target_count"] = afg.target
        record["num_generated"] = afg.num_generated
        # beta and the last validation accuracy: from the stage's state when resuming, else initial
        if record.get("beta_last") is not None:  # resuming: the exact beta (beta_history is rounded)
            beta = torch.tensor(record["beta_last"], dtype=torch.float32, device=device)
        elif record.get("beta_history"):
            beta = torch.tensor(record["beta_history"][-1], dtype=torch.float32, device=device)
        else:
            beta = init_beta(tail_mask, opts["beta_init"]).to(device)
        val = None
        prev_acc = None
        if "val" in ctx.splits:
            val = (ctx.features("val"), ctx.splits["val"][1])
            unseen = torch.nonzero(torch.bincount(val[1], minlength=C) == 0).flatten().tolist()
            record["classes_without_val"] = unseen
            if unseen and opts["adaptive_beta"]:
                warnings.warn(f"stage {stage.name!r} (glag_afg): the validation split has no items of {len(unseen)} "
                              f"classes {unseen[:20]}; their beta cannot adapt and stays at beta_init", stacklevel=2)
            if record.get("val_acc_last") is not None:
                prev_acc = torch.tensor(record["val_acc_last"], dtype=torch.float32, device=device)
            else:
                prev_acc = per_class_accuracy(head, val[0], val[1], C)
                record["val_acc_last"] = [float(a) for a in prev_acc.tolist()]

        ce = build_stage_loss(ctx, stage.loss)
        loss = GLAGStage2Loss(
            ce, head.base if opts["kd"] else None, head_mask, opts["kd_temperature"], opts["kd_on"]
        ).to(device)
        adapter = BetaAdapter(
            beta, tail_mask, loss=loss, kd_alpha=opts["kd_alpha"], head=head, val=val,
            adaptive=bool(opts["adaptive_beta"]), step=opts["beta_step"], bounds=tuple(opts["beta_bounds"]),
            tolerance=opts["beta_tolerance"], prev_acc=prev_acc, record=record,
        )
        strategy = build_sampler(stage.sampler["name"], **{k: v for k, v in stage.sampler.items() if k != "name"})
        source = AFGSource(afg, adapter, strategy, stage.batch_size, stage.epochs, ctx.rng.torch)

        def compute_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = head(x)
            return loss(logits, y, x), logits

        return make_plan(ctx, stage, source, compute_loss, trained=head, frozen=model.encoder, loss_fn=ce,
                         hooks=[ce, adapter])
