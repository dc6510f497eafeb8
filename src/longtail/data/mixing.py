"""Batch mixing: mixup (Zhang et al. 2018) and Remix (Chou et al. 2020), by name in ``MIXING``.

Both mix each sample with a partner chosen by a random permutation of the batch and return
a :class:`MixedBatch`; :func:`mixed_loss` turns it into the loss
``loss(z, y_a; w=lam) + loss(z, y_b; w=1−lam)``. Everything runs on the inputs' device
with no host sync (CUDA-graph capturable); λ ~ Beta(α, α) is drawn as
G_a / (G_a + G_b) with G ~ Gamma(α) from ``torch._standard_gamma`` (torch's device RNG,
or ``generator``).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch

from ..errors import ConfigError
from ..losses.base import Loss
from ..registry import Registry, closest


class MixedBatch(NamedTuple):
    """Mixed inputs ``x``; targets ``y_a`` (the samples' own) and ``y_b`` (their partners');
    ``lam`` ``[B]``: the weight of ``y_a`` in each sample's label (``1 − lam`` for ``y_b``)."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: torch.Tensor


def _beta(alpha: float, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` draws of Beta(α, α) (float32) as the ratio of two Gamma(α) draws."""
    gamma = torch._standard_gamma(torch.full((n, 2), float(alpha), device=device), generator=generator)
    return gamma[:, 0] / (gamma[:, 0] + gamma[:, 1]).clamp_min(torch.finfo(gamma.dtype).tiny)


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ConfigError(f"alpha must be > 0, got {alpha}; to train without mixing, leave out the stage's mixing")


def _check_kappa(kappa: float) -> None:
    if kappa < 1:
        raise ConfigError(f"Remix kappa must be >= 1 (a class-count ratio), got {kappa}")


def _mix(
    x: torch.Tensor, alpha: float, per_sample: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixed inputs λ·x + (1−λ)·x[perm], the permutation and λ ``[B]``."""
    if not x.is_floating_point():
        raise TypeError(f"mixing needs floating-point inputs, got {x.dtype}; normalize the images first")
    _check_alpha(alpha)
    batch = x.shape[0]
    perm = torch.randperm(batch, generator=generator, device=x.device)
    lam = _beta(alpha, batch if per_sample else 1, generator, x.device).expand(batch)
    weight = lam.to(x.dtype).view(batch, *([1] * (x.ndim - 1)))
    return weight * x + (1 - weight) * x[perm], perm, lam


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 1.0,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
) -> MixedBatch:
    """mixup (Zhang et al. 2018, "mixup: beyond empirical risk minimization"):
    x̃ = λ·x_i + (1−λ)·x_j, ỹ = λ·y_i + (1−λ)·y_j, λ ~ Beta(α, α), j = perm(i).

    As in the reference code, one λ per batch (``per_sample=True``: one per sample) and
    the partner is a random permutation of the batch; α = 1 is the reference CIFAR default.
    ``lam`` is returned as a ``[B]`` tensor.
    """
    mixed, perm, lam = _mix(x, alpha, per_sample, generator)
    return MixedBatch(mixed, y, y[perm], lam)


def remix_label_weight(
    lam_x: torch.Tensor, n_a: torch.Tensor, n_b: torch.Tensor, kappa: float = 3.0, tau: float = 0.5
) -> torch.Tensor:
    """Remix's label weight λ_y of y_a (Chou et al. 2020, Sec. 3):

        λ_y = 0    if n_a/n_b ≥ κ   and λ_x < τ
        λ_y = 1    if n_a/n_b ≤ 1/κ and 1 − λ_x < τ
        λ_y = λ_x  otherwise

    n_a, n_b: training counts of the classes of x_a and x_b; λ_x: weight of x_a in the
    mixed image. When the majority image contributes less than τ of the pixels, the label
    goes entirely to the minority class. The ratio tests are evaluated as n_a ≥ κ·n_b and
    κ·n_a ≤ n_b (the same for positive counts, and exact in floating point).
    """
    n_a, n_b = n_a.to(lam_x.dtype), n_b.to(lam_x.dtype)
    to_b = (n_a >= kappa * n_b) & (lam_x < tau)
    to_a = (kappa * n_a <= n_b) & (1 - lam_x < tau)
    return torch.where(to_b, 0.0, torch.where(to_a, 1.0, lam_x))


def remix(
    x: torch.Tensor,
    y: torch.Tensor,
    class_counts: torch.Tensor | Sequence[int],
    alpha: float = 1.0,
    kappa: float = 3.0,
    tau: float = 0.5,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
) -> MixedBatch:
    """Remix (Chou et al. 2020, "Remix: rebalanced mixup"): inputs mixed as in
    :func:`mixup` with λ_x ~ Beta(α, α), labels weighted by :func:`remix_label_weight`
    (paper defaults κ = 3, τ = 0.5, α = 1).

    ``class_counts``: training count per class; pass a tensor on ``x``'s device (e.g. a
    module buffer) inside captured CUDA graphs — a list is copied to the device each call.
    """
    _check_kappa(kappa)
    counts = torch.as_tensor(class_counts, device=x.device)
    mixed, perm, lam_x = _mix(x, alpha, per_sample, generator)
    y_b = y[perm]
    lam = remix_label_weight(lam_x, counts[y], counts[y_b], kappa, tau)
    return MixedBatch(mixed, y, y_b, lam)


def mixed_loss(loss_fn: Loss, logits: torch.Tensor, batch: MixedBatch) -> torch.Tensor:
    """``loss_fn(logits, y_a, sample_weight=lam) + loss_fn(logits, y_b, sample_weight=1 − lam)``:
    the mixup objective λ·ℓ(z, y_a) + (1−λ)·ℓ(z, y_b), per sample, averaged over the batch.

    A loss that keeps statistics of the batches it sees (GHM-C's gradient-norm EMA, Seesaw's
    cumulative counts, GHM-CWAP's histograms) is called twice per step here, once per label set,
    so its statistics count each mixed image under both of its labels."""
    lam = batch.lam.to(logits.dtype)
    return loss_fn(logits, batch.y_a, sample_weight=lam) + loss_fn(logits, batch.y_b, sample_weight=1 - lam)


# ---------------------------------------------------------------- mixing schemes by name

MIXING = Registry("mixing")


class MixingScheme:
    """A batch-mixing scheme of :data:`MIXING`, named by a stage's ``mixing: {name: ..., **options}``.

    ``mix(x, y, **options, generator=None)`` — with ``uses_counts``, ``mix(x, y, class_counts, **options,
    generator=None)`` (the training count per class, a tensor on ``x``'s device) — returns a
    :class:`MixedBatch`; its keyword parameters other than ``generator`` are the config options, and
    :meth:`check` refuses bad option values before stage 1 trains. A new scheme::

        @MIXING.register("mymix")
        class MyMix(MixingScheme):
            @staticmethod
            def mix(x, y, alpha=1.0, generator=None): ...
    """

    uses_counts = False

    @staticmethod
    def mix(x: torch.Tensor, y: torch.Tensor, **options: Any) -> MixedBatch:
        raise NotImplementedError

    @classmethod
    def option_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.mix).parameters if p not in ("x", "y", "class_counts", "generator")]

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> None:
        """Raise a ConfigError for a bad option value (the names are checked already)."""


@MIXING.register("mixup")
class Mixup(MixingScheme):
    """:func:`mixup`: options alpha, per_sample."""

    mix = staticmethod(mixup)

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> None:
        _check_alpha(options.get("alpha", 1.0))


@MIXING.register("remix")
class Remix(MixingScheme):
    """:func:`remix`: options alpha, kappa, tau, per_sample."""

    uses_counts = True
    mix = staticmethod(remix)

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> None:
        _check_alpha(options.get("alpha", 1.0))
        _check_kappa(options.get("kappa", 3.0))


def check_mixing(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a mixing spec ``{name: <a MIXING name>, **options}``, validated: an unknown
    scheme or option name, or a bad value (mixup / Remix: α ≤ 0, κ < 1) raise a ConfigError
    (``generator`` is not a config option)."""
    options = dict(spec)
    name = options.pop("name", None)
    if not isinstance(name, str) or name not in MIXING:
        raise ConfigError(f"unknown mixing {name!r}{closest(str(name), MIXING)}; valid: {', '.join(MIXING)}")
    scheme = MIXING.get(name)
    valid = scheme.option_names()
    for key in options:
        if key not in valid:
            raise ConfigError(f"unknown option {key!r} for mixing {name!r}{closest(key, valid)}; valid: {', '.join(valid)}")
    scheme.check(options)
    return name, options


def build_mixer(
    spec: Mapping[str, Any] | None, class_counts: Callable[[], torch.Tensor], generator: torch.Generator | None = None
) -> Callable[[torch.Tensor, torch.Tensor], MixedBatch] | None:
    """The stage's mixing ``spec`` (None or empty: no mixing) as ``mixer(x, y) -> MixedBatch``
    drawing from ``generator``; ``class_counts()`` gives the training counts on the device (called
    only for schemes that use them)."""
    if not spec:
        return None
    name, options = check_mixing(spec)
    scheme = MIXING.get(name)
    if scheme.uses_counts:
        counts = class_counts()
        return lambda x, y: scheme.mix(x, y, counts, **options, generator=generator)
    return lambda x, y: scheme.mix(x, y, **options, generator=generator)
