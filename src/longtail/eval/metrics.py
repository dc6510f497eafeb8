"""Evaluation metrics: confusion matrix, per-class and many/medium/few accuracy, ECE, NLL.

Conventions (see ``docs/conventions.md``, Evaluation):

- Groups by *training* count: "many" if n > 100, "few" if n < 20, otherwise "medium"
  (so 100 and 20 themselves are medium). Thresholds are arguments.
- A group's accuracy is the mean of the per-class accuracies of its classes (the standard
  convention; on a balanced test set it equals the group's sample accuracy). An empty group
  has accuracy ``None``. A class with no test samples has per-class accuracy ``None`` and is
  left out of its group's mean and of the per-class plots.
- Top-1 is the sample accuracy over every test sample.
- ECE (Guo et al. 2017): 15 equal-width confidence bins, bin m holding confidences in
  ((m-1)/15, m/15]; ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)|, confidence = max softmax.
- NLL is the mean cross-entropy per test sample, in nats.
- Accuracies and ECE are in percent.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError

GROUPS = ("many", "medium", "few")
NUM_ECE_BINS = 15


def class_groups(class_counts, many_threshold: int = 100, few_threshold: int = 20) -> np.ndarray:
    """Label each class "many" (n > many_threshold), "few" (n < few_threshold) or "medium".

    ``class_counts`` are *training* counts, one per class. Returns a string array of shape (C,).
    """
    counts = np.asarray(class_counts)
    if counts.ndim != 1 or (counts < 0).any():
        raise DataError(
            f"class_counts must be a 1-D array of non-negative training counts, got shape "
            f"{counts.shape}; pass one count per class (e.g. dataset.class_counts)"
        )
    if few_threshold > many_threshold:
        raise ConfigError(
            f"few_threshold ({few_threshold}) is above many_threshold ({many_threshold}); "
            "choose few_threshold <= many_threshold"
        )
    groups = np.full(counts.shape, "medium", dtype="<U6")
    groups[counts > many_threshold] = "many"
    groups[counts < few_threshold] = "few"
    return groups


def _mean_or_none(values: np.ndarray) -> float | None:
    """Mean of the finite entries, or None if there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _macro_f1(confusion: np.ndarray) -> float:
    """Mean F1 (%) over the classes that occur as a label or a prediction."""
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    present = (support + predicted) > 0
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return 100.0 * float(f1.mean())



@torch.no_grad()
def per_class_accuracy(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class accuracy ``[C]`` (float32 on the features' device, 0..1; 0 for a class without
    samples) of ``head`` on ``features``: the validation score of the post-hoc and stage-2 searches
    (tau-norm's tau, GLAG's beta, LADC's beta), no host synchronisation."""
    preds = head(features.float()).argmax(1)
    correct = torch.zeros(num_classes, device=features.device).index_add_(0, labels, (preds == labels).float())
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1)
    return correct / counts

@dataclass
class EvalResult:
    """Metrics of one evaluation; every field is a plain Python value (JSON-friendly).

    ``per_class_accuracy[c]`` is None for a class without test samples; ``many`` / ``medium`` /
    ``few`` are None for an empty group; ``nll`` is None when it was not tracked.
    ``confusion[i][j]`` counts test samples of true class i predicted as class j.
    ``macro_accuracy`` is the mean per-class recall over the classes with test samples (balanced
    accuracy; equal to top-1 on a balanced test set); ``macro_f1`` the mean over those classes
    and the predicted ones of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c) (scikit-learn's
    ``f1_score(average="macro")``). On an imbalanced test set they, not top-1, weigh every class
    alike. Both are None in results written before they existed.
    """

    top1: float
    per_class_accuracy: list[float | None]
    many: float | None
    medium: float | None
    few: float | None
    group_sizes: dict[str, int]
    ece: float
    nll: float | None
    confusion: list[list[int]]
    thresholds: dict[str, int]
    num_samples: int
    macro_accuracy: float | None = None
    macro_f1: float | None = None

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (inverse of ``from_dict``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvalResult:
        """Rebuild a result written by ``to_dict``."""
        names = {f.name for f in fields(cls)}
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        unknown, missing = set(data) - names, names - optional - set(data)
        if unknown or missing:
            raise DataError(
                f"not an EvalResult dict: unknown keys {sorted(unknown)}, missing keys "
                f"{sorted(missing)}; pass the output of EvalResult.to_dict()"
            )
        return cls(**data)


class ConfusionAccumulator:
    """Accumulate a confusion matrix, ECE bins and NLL on the device, batch by batch.

    ``update`` does no host synchronisation (counts are added with ``index_add_``, not
    ``torch.bincount``, which reads the maximum label back to the host on CUDA), so it can run
    inside a fast evaluation loop. Labels outside ``0..C-1`` are counted apart and reported
    by ``compute``.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", track_nll: bool = True):
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.track_nll = track_nll
        self._bin_uppers = torch.linspace(0, 1, NUM_ECE_BINS + 1, device=self.device)[1:]
        self.reset()

    def reset(self) -> None:
        """Zero every accumulator."""
        c, dev = self.num_classes, self.device
        # The last entry counts samples whose label is out of range.
        self._confusion = torch.zeros(c * c + 1, dtype=torch.int64, device=dev)
        self._bin_conf = torch.zeros(NUM_ECE_BINS, dtype=torch.float64, device=dev)
        self._bin_correct = torch.zeros(NUM_ECE_BINS, dtype=torch.float64, device=dev)
        self._bin_count = torch.zeros(NUM_ECE_BINS, dtype=torch.float64, device=dev)
        self._nll_sum = torch.zeros((), dtype=torch.float64, device=dev)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``logits`` [B, C] (any float dtype), ``targets`` [B] integer labels."""
        c = self.num_classes
        if logits.ndim != 2 or logits.shape[1] != c or targets.shape != logits.shape[:1]:
            raise DataError(
                f"expected logits [B, {c}] and targets [B], got logits {tuple(logits.shape)} and "
                f"targets {tuple(targets.shape)}; pass the model output and the batch labels"
            )
        logp = F.log_softmax(logits.to(self.device, torch.float32), dim=1)
        targets = targets.to(self.device, torch.int64)
        valid = (targets >= 0) & (targets < c)
        safe_targets = targets.clamp(0, c - 1)
        max_logp, preds = logp.max(dim=1)

        flat = torch.where(valid, safe_targets * c + preds, c * c)
        self._confusion.index_add_(0, flat, torch.ones_like(flat))

        weight = valid.to(torch.float64)
        confidence = max_logp.exp()
        bins = torch.bucketize(confidence, self._bin_uppers).clamp_(max=NUM_ECE_BINS - 1)
        self._bin_conf.index_add_(0, bins, confidence.to(torch.float64) * weight)
        self._bin_correct.index_add_(0, bins, (preds == targets).to(torch.float64) * weight)
        self._bin_count.index_add_(0, bins, weight)
        if self.track_nll:
            nll = -logp.gather(1, safe_targets[:, None]).squeeze(1)
            self._nll_sum += (nll.to(torch.float64) * weight).sum()

    def confusion(self) -> np.ndarray:
        """The C×C int64 confusion matrix so far (rows: true class, columns: prediction)."""
        invalid = int(self._confusion[-1])
        if invalid:
            raise DataError(
                f"{invalid} targets were outside 0..{self.num_classes - 1}; remap the labels or "
                f"set num_classes (the accumulator has {self.num_classes} classes)"
            )
        return self._confusion[:-1].view(self.num_classes, self.num_classes).cpu().numpy()

    def compute(self, class_counts, many_threshold: int = 100, few_threshold: int = 20) -> EvalResult:
        """Turn the accumulated counts into an ``EvalResult``; ``class_counts`` are training counts."""
        counts = np.asarray(class_counts)
        if counts.shape != (self.num_classes,):
            raise DataError(
                f"class_counts has shape {counts.shape} but the accumulator has {self.num_classes} "
                "classes; pass the training counts of the same dataset"
            )
        groups = class_groups(counts, many_threshold, few_threshold)
        confusion = self.confusion()
        total = int(confusion.sum())
        if total == 0:
            raise DataError("no samples were accumulated; call update(logits, targets) before compute()")

        per_class_total = confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = 100.0 * np.diag(confusion) / per_class_total  # NaN where no test samples
        bin_gap = (self._bin_correct - self._bin_conf).abs().sum()
        return EvalResult(
            top1=100.0 * float(np.trace(confusion)) / total,
            per_class_accuracy=[None if math.isnan(a) else float(a) for a in per_class],
            **{g: _mean_or_none(per_class[groups == g]) for g in GROUPS},
            group_sizes={g: int((groups == g).sum()) for g in GROUPS},
            ece=100.0 * float(bin_gap) / total,
            nll=float(self._nll_sum) / total if self.track_nll else None,
            confusion=confusion.tolist(),
            thresholds={"many": int(many_threshold), "few": int(few_threshold)},
            num_samples=total,
            macro_accuracy=_mean_or_none(per_class),
            macro_f1=_macro_f1(confusion),
        )


def evaluate(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> EvalResult:
    """Metrics of a whole test set given at once (logits [N, C], targets [N])."""
    if logits.ndim != 2:
        raise DataError(f"expected logits [N, C], got shape {tuple(logits.shape)}")
    acc = ConfusionAccumulator(logits.shape[1], logits.device)
    acc.update(logits, targets)
    return acc.compute(class_counts, many_threshold, few_threshold)


def weight_norms(weight: torch.Tensor) -> np.ndarray:
    """Per-class L2 norms of a classifier weight matrix [C, D] (e.g. ``head.class_weight()``)."""
    if weight.ndim != 2:
        raise DataError(
            f"expected a [C, D] weight matrix, got shape {tuple(weight.shape)}; "
            "pass head.class_weight()"
        )
    return torch.linalg.vector_norm(weight.detach().float(), dim=1).cpu().numpy()
