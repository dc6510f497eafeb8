"""Sampling strategies for long-tailed training, and the samplers that apply them.

A strategy is a plain object (in the spirit of imbalanced-learn) that gives, for an epoch,
the probability q_c of drawing class c (Kang et al. 2020, "Decoupling representation and
classifier", Eq. 1): q_c = n_c^q / sum_i n_i^q.

========================  =====================================================================
``instance``              q = 1: q_c ∝ n_c, served as a permutation of the data every epoch
``class_balanced``        q = 0: q_c = 1/C (Kang et al. 2020)
``sqrt``                  q = 1/2: q_c ∝ sqrt(n_c) (Mahajan et al. 2018)
``power``                 q_c ∝ n_c^q for a given ``q``
``progressive``           q_c(t) = (1 − t/T)·q_c^instance + (t/T)·q_c^balanced (Kang et al. 2020)
``custom``                user-given class probabilities
``drs``                   deferred re-sampling (Cao et al. 2019): instance sampling until
                          ``start_epoch``, class-balanced afterwards
========================  =====================================================================

Every strategy other than instance draws a class c ~ q, then an image of class c uniformly
(with replacement). Empty classes (n_c = 0) are never drawn. The same strategy object backs
:class:`StrategySampler` (a ``torch.utils.data.Sampler`` for ordinary DataLoaders) and
:class:`DeviceIndexDrawer` (index tensors drawn on the device, no host sync).
"""
from __future__ import annotations

import inspect
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ConfigError, DataError
from ..registry import Registry

SAMPLERS = Registry("sampler")


def _check_counts(class_counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise DataError(
            f"class_counts must be a non-empty 1-D array of non-negative counts, got {counts!r}; "
            "pass np.bincount(train_labels, minlength=num_classes)"
        )
    if counts.sum() <= 0:
        raise DataError("class_counts are all zero; the training split has no images to sample")
    return counts


def _normalised(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``weights`` restricted to non-empty classes, normalised to sum to 1."""
    weights = np.where(counts > 0, weights, 0.0)
    return weights / weights.sum()


class SamplingStrategy:
    """Per-class sampling probabilities for an epoch.

    ``without_replacement`` is True only for strategies that serve every epoch as a
    permutation of the data (instance sampling); :meth:`is_permutation` says it per epoch
    (deferred re-sampling is a permutation before its start epoch only).
    """

    without_replacement: bool = False
    epoch_params: tuple[str, ...] = ()  # constructor options that hold epochs (epoch_scale moves them)

    def class_probabilities(
        self, class_counts: np.ndarray, epoch: int = 0, total_epochs: int = 1
    ) -> np.ndarray:
        """Probabilities q_c (float64, shape ``(C,)``, sums to 1) for 0-based ``epoch``."""
        raise NotImplementedError

    def is_permutation(self, epoch: int = 0, total_epochs: int = 1) -> bool:
        """Whether ``epoch`` is served as a permutation of the data (instance sampling)."""
        return self.without_replacement

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"


@SAMPLERS.register("power")
class PowerSampling(SamplingStrategy):
    """q_c = n_c^q / Σ_i n_i^q (Kang et al. 2020, Eq. 1), drawn with replacement.

    q = 1 gives instance-balanced probabilities, q = 0 class-balanced, q = 1/2 square-root.
    """

    def __init__(self, *, q: float):
        if not np.isfinite(q):
            raise ConfigError(f"power sampling needs a finite exponent q, got {q!r}")
        self.q = float(q)

    def class_probabilities(self, class_counts, epoch=0, total_epochs=1):
        counts = _check_counts(class_counts)
        return _normalised(np.power(np.maximum(counts, 1.0), self.q), counts)


@SAMPLERS.register("instance")
class InstanceSampling(SamplingStrategy):
    """Instance-balanced sampling, q_c = n_c / N: a random permutation of the data each epoch."""

    without_replacement = True

    def class_probabilities(self, class_counts, epoch=0, total_epochs=1):
        counts = _check_counts(class_counts)
        return counts / counts.sum()


@SAMPLERS.register("class_balanced")
class ClassBalancedSampling(SamplingStrategy):
    """Class-balanced sampling, q_c = 1/C (Kang et al. 2020): a class, then one of its images."""

    def class_probabilities(self, class_counts, epoch=0, total_epochs=1):
        counts = _check_counts(class_counts)
        return _normalised(np.ones_like(counts), counts)


@SAMPLERS.register("sqrt")
class SquareRootSampling(PowerSampling):
    """Square-root sampling, q_c ∝ n_c^{1/2} (Mahajan et al. 2018; Kang et al. 2020 with q = 1/2)."""

    def __init__(self):
        super().__init__(q=0.5)


@SAMPLERS.register("progressive")
class ProgressivelyBalancedSampling(SamplingStrategy):
    """Progressively-balanced sampling (Kang et al. 2020, Sec. 3):

    q_c(t) = (1 − t/T)·n_c/N + (t/T)·1/C, with t the 0-based epoch and T = ``total_epochs``
    (t/T clipped to [0, 1]); epoch 0 is instance-balanced and the last epoch is
    (T−1)/T of the way to class-balanced, as in the paper's formula.
    """

    def class_probabilities(self, class_counts, epoch=0, total_epochs=1):
        if total_epochs < 1:
            raise ConfigError(f"total_epochs must be >= 1, got {total_epochs}")
        counts = _check_counts(class_counts)
        t = min(max(epoch / total_epochs, 0.0), 1.0)
        instance = counts / counts.sum()
        balanced = _normalised(np.ones_like(counts), counts)
        return (1.0 - t) * instance + t * balanced


@SAMPLERS.register("custom")
class CustomSampling(SamplingStrategy):
    """User-given class probabilities (any non-negative weights with a positive sum; they are
    normalised to sum to 1). A class with positive weight must have training images."""

    def __init__(self, *, probabilities: Sequence[float]):
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.ndim != 1 or probs.size == 0 or not np.all(np.isfinite(probs)) or np.any(probs < 0):
            raise ConfigError(
                f"custom sampling needs a list of non-negative class probabilities, got {probabilities!r}"
            )
        if probs.sum() <= 0:
            raise ConfigError("custom sampling probabilities are all zero; give at least one class weight > 0")
        self.probabilities = probs / probs.sum()

    def class_probabilities(self, class_counts, epoch=0, total_epochs=1):
        counts = _check_counts(class_counts)
        if counts.size != self.probabilities.size:
            raise ConfigError(
                f"custom sampling has {self.probabilities.size} probabilities but the data has "
                f"{counts.size} classes; give one probability per class"
            )
        empty = np.flatnonzero((counts == 0) & (self.probabilities > 0))
        if empty.size:
            raise DataError(
                f"custom sampling gives positive probability to empty classes {empty.tolist()}; "
                "set their probability to 0"
            )
        return self.probabilities.copy()


@SAMPLERS.register("drs")
class DeferredResampling(SamplingStrategy):
    """Deferred re-sampling, DRS (Cao et al. 2019, Sec. 3.3): plain instance sampling (a
    permutation) for epochs ``< start_epoch``, then class-balanced sampling. The paper's
    CIFAR schedule defers to epoch 160 of 200."""

    epoch_params = ("start_epoch",)

    def __init__(self, *, start_epoch: int = 160):
        if start_epoch < 0:
            raise ConfigError(f"drs start_epoch must be >= 0, got {start_epoch}")
        self.start_epoch = int(start_epoch)

    def is_permutation(self, epoch=0, total_epochs=1):
        return epoch < self.start_epoch

    def class_probabilities(self, class_counts, epoch=0, total_epochs=1):
        if self.is_permutation(epoch, total_epochs):
            return InstanceSampling().class_probabilities(class_counts)
        return ClassBalancedSampling().class_probabilities(class_counts)


def build_sampler(name: str, **options: Any) -> SamplingStrategy:
    """Build a registered sampling strategy by name, e.g. ``build_sampler("power", q=0.3)``."""
    factory = SAMPLERS.get(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ConfigError(
            f"sampler {name!r} has no option(s) {unknown}; "
            f"valid options: {sorted(params) or 'none'}"
        )
    return factory(**options)


class DeviceIndexDrawer:
    """Draws an epoch's training indices on the labels' device, without a host sync.

    On construction (once, one host sync) it sorts the indices by class and keeps, on the
    device, the class-sorted index array, each class's start in it and each class's count.

    :meth:`draw`:

    * permutation epochs (instance sampling): ``torch.randperm(N)``; when
      ``num_samples > N`` further independent permutations are appended and the result cut
      at ``num_samples``, so every image appears ``floor(num_samples/N)`` or
      ``ceil(num_samples/N)`` times (at least once per epoch when ``num_samples ≥ N``);
      when ``num_samples < N`` it is the head of one permutation (no repeats).
    * otherwise: classes ``c ~ torch.multinomial(q, num_samples, replacement=True)`` with
      ``q`` the strategy's probabilities for the epoch (computed on the host and copied to
      the device asynchronously from pinned memory), then an image of class c at
      offset ``floor(u·n_c)``, ``u ~ U[0, 1)``.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        num_classes: int,
        strategy: SamplingStrategy | str,
        total_epochs: int = 1,
    ):
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.numel() == 0 or labels.is_floating_point():
            raise DataError(f"labels must be a non-empty 1-D integer tensor, got shape {tuple(labels.shape)}")
        labels = labels.long()
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise DataError(
                f"labels span [{low}, {high}] but num_classes is {num_classes}; "
                "remap the labels or pass the right num_classes"
            )
        self.strategy = build_sampler(strategy) if isinstance(strategy, str) else strategy
        self.total_epochs = int(total_epochs)
        self.device = labels.device
        self.num_items = labels.numel()
        counts = torch.bincount(labels, minlength=num_classes)
        self.class_counts = counts.cpu().numpy()
        self.sorted_indices = torch.sort(labels, stable=True).indices
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts

    def draw(self, num_samples: int, epoch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num_samples`` indices (int64, on the labels' device) for 0-based ``epoch``."""
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
        if self.strategy.is_permutation(epoch, self.total_epochs):
            rounds = -(-num_samples // self.num_items)
            perms = [
                torch.randperm(self.num_items, generator=generator, device=self.device) for _ in range(rounds)
            ]
            return torch.cat(perms)[:num_samples]
        q = self.strategy.class_probabilities(self.class_counts, epoch, self.total_epochs)
        q = torch.as_tensor(q, dtype=torch.float32)
        if self.device.type == "cuda":
            q = q.pin_memory()  # an asynchronous copy: the host does not wait for the device
        q = q.to(self.device, non_blocking=True)
        classes = torch.multinomial(q, num_samples, replacement=True, generator=generator)
        u = torch.rand(num_samples, generator=generator, device=self.device, dtype=torch.float64)
        n = self.counts[classes]
        # float64 keeps floor(u·n) < n for every count; the minimum guards it anyway.
        offsets = torch.minimum((u * n).long(), n - 1)
        return self.sorted_indices[self.starts[classes] + offsets]


class StrategySampler(Sampler[int]):
    """A ``torch.utils.data.Sampler`` that applies a :class:`SamplingStrategy`.

    Yields ``num_samples`` (default: the dataset size) indices per epoch; call
    :meth:`set_epoch` before each epoch for strategies that change with it (progressive, drs).
    Draws with :class:`DeviceIndexDrawer` on the CPU.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        strategy: SamplingStrategy | str,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ):
        labels = torch.as_tensor(labels).to("cpu", torch.int64)
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
        self.drawer = DeviceIndexDrawer(labels, num_classes, strategy)
        self.num_samples = labels.numel() if num_samples is None else int(num_samples)
        self.generator = generator
        self.epoch = 0

    def set_epoch(self, epoch: int, total_epochs: int | None = None) -> None:
        """Select the 0-based epoch (and optionally the total) the next iteration draws for."""
        self.epoch = int(epoch)
        if total_epochs is not None:
            self.drawer.total_epochs = int(total_epochs)

    def __iter__(self) -> Iterator[int]:
        return iter(self.drawer.draw(self.num_samples, self.epoch, self.generator).tolist())

    def __len__(self) -> int:
        return self.num_samples
