"""The loss interface every long-tailed loss implements, and the loss registry."""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry, closest

LOSSES = Registry("loss")


def counts_tensor(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Class counts as a float64-safe float32 tensor (validated: all positive)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float32).flatten()
    if counts.numel() == 0 or bool((counts <= 0).any()):
        raise ValueError(
            f"class_counts must be positive for every class, got {counts.tolist()[:20]}; "
            "drop empty classes or pass the training-split counts"
        )
    return counts


class Loss(nn.Module):
    """Base class: a loss on logits ``[B, C]`` and integer targets ``[B]``.

    Subclasses implement :meth:`per_sample`; :meth:`forward` is the mean over the batch of
    ``sample_weight * per_sample`` (mixing schemes pass per-sample weights).
    Anything that changes with the epoch lives in buffers updated in place by
    :meth:`on_epoch_start`, so the step stays capturable in a CUDA graph. A loss that draws random
    numbers draws them from ``generator``, which the engine sets to the run's device generator
    (:func:`set_generator`; None: torch's global one).
    """

    generator: torch.Generator | None = None
    uses_features: bool = False
    requires_head: str | None = None  # the head kind the loss is defined on (e.g. "cosine" for LDAM)
    epoch_params: tuple[str, ...] = ()  # constructor options that hold epochs (epoch_scale moves them)

    @classmethod
    def epoch_params_of(cls, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The options of a loss built with ``options`` that hold epochs; a wrapper adds its base's."""
        return cls.epoch_params

    @classmethod
    def head_required_by(cls, options: Mapping[str, Any]) -> str | None:
        """The head kind a loss built with ``options`` needs (None: any head). A loss that wraps a
        base loss overrides this to ask the base."""
        return cls.requires_head

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        losses = self.per_sample(logits, targets)
        if sample_weight is not None:
            losses = losses * sample_weight
        return losses.mean()

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Hook called before each epoch (0-based). Default: nothing changes."""

    def on_epoch_end(self) -> None:
        """Hook called after each epoch. Default: nothing changes."""

    def loss_changes_at(self, epoch: int) -> bool:
        """Whether the loss itself changes at ``epoch`` (e.g. DRW switching on its weights), so that a
        jump in its value there is expected (the divergence check restarts its level). Default: no."""
        return False


def set_generator(module: nn.Module, generator: torch.Generator | None) -> None:
    """Set ``generator`` on every :class:`Loss` in ``module`` (a loss and the losses it wraps)."""
    for part in module.modules():
        if isinstance(part, Loss):
            part.generator = generator


def loss_options(name: str, options: Mapping[str, Any] | None = None) -> list[str] | None:
    """The option names loss ``name`` takes (``class_counts`` comes from the run); a loss that
    wraps a base loss by name (``base``, e.g. ``drw``) also takes the base's. ``None``: any."""
    params = inspect.signature(LOSSES.get(name)).parameters
    names = {p for p, v in params.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)} - {"class_counts"}
    if any(v.kind is v.VAR_KEYWORD for v in params.values()):
        base = (options or {}).get("base", params["base"].default if "base" in params else None)
        base_names = loss_options(base) if isinstance(base, str) else None
        if base_names is None:
            return None
        names |= set(base_names)
    return sorted(names)


def check_loss_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise a ConfigError naming the closest valid option for an option loss ``name`` does not take."""
    valid = loss_options(name, options)
    for key in options:
        if valid is not None and key not in valid:
            raise ConfigError(
                f"unknown option {key!r} for loss {name!r}{closest(key, valid)}; valid: {', '.join(valid) or '(none)'}"
            )


def build_loss(name: str, class_counts: Sequence[int] | None = None, **options: Any) -> Loss:
    """Build a registered loss; ``class_counts`` goes to constructors that take it. Option names are
    checked first (:func:`check_loss_options`)."""
    factory = LOSSES.get(name)
    check_loss_options(name, options)
    if "class_counts" in inspect.signature(factory).parameters:
        if class_counts is None:
            raise ValueError(f"loss {name!r} needs the training class counts (class_counts=...)")
        options["class_counts"] = class_counts
    return factory(**options)
