"""Image augmentations by name: the ``AUGMENTATIONS`` registry (a stage's ``augment``).

A stage gives its augmentation by name (``augment: randaugment``) or as a mapping with options
(``augment: {name: randaugment, num_ops: 2}``). Registered:

- ``none``: no augmentation;
- ``crop_flip``: random crop of the zero-padded image + horizontal flip (:func:`random_crop_flip`);
- ``randaugment`` / ``autoaugment``: the :class:`RandAugment` / :class:`AutoAugment` policy (options:
  its constructor's), then random crop + flip.

Each works on uint8 image batches on the device (in-memory data, :meth:`Augmentation.build`) and,
by name only, on images streamed from disk (:meth:`Augmentation.file_transforms`, torchvision
transforms on PIL images). A random augmentation takes ``generator`` in ``build`` (the run's
device generator, :class:`~longtail.engine.rng.RunRNG`) and draws from it; one without that
parameter is built without it. A new augmentation::

    @AUGMENTATIONS.register("cutout")
    class CutoutCropFlip(Augmentation):
        @staticmethod
        def build(device, generator=None, size=16):
            cutout = Cutout(size).to(device)
            return lambda x: random_crop_flip(cutout(x, generator), generator=generator)
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn
from torchvision import transforms as T

from ..errors import ConfigError
from ..registry import Registry, closest
from .gpu_augment import AutoAugment, RandAugment, random_crop_flip

AUGMENTATIONS = Registry("augment")

BatchAugment = Callable[[torch.Tensor], torch.Tensor]


class Augmentation:
    """An augmentation of :data:`AUGMENTATIONS`. Its config options are the keyword parameters of
    :meth:`build` other than ``device`` and ``generator`` (override :meth:`option_names` to read
    them elsewhere)."""

    @staticmethod
    def build(device: torch.device, generator: torch.Generator | None = None, **options: Any) -> BatchAugment | None:
        """The augmentation of uint8 image batches ``[B, C, H, W]`` on ``device`` (None: none), its
        random draws from ``generator``; a ValueError for a bad option value becomes a ConfigError
        naming the augment."""
        raise NotImplementedError

    @classmethod
    def option_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.build).parameters if p not in ("device", "generator")]

    @classmethod
    def file_transforms(cls) -> list[Any] | None:
        """torchvision transforms for images streamed from disk, after RandomResizedCrop + flip +
        ColorJitter (``data/files.py: train_transform``); None: the evaluation transform instead.
        Not implemented: the augmentation applies to in-memory images only."""
        raise NotImplementedError


@AUGMENTATIONS.register("none")
class NoAugment(Augmentation):
    @staticmethod
    def build(device: torch.device, generator: torch.Generator | None = None) -> None:
        return None

    @classmethod
    def file_transforms(cls) -> None:
        return None


@AUGMENTATIONS.register("crop_flip")
class CropFlip(Augmentation):
    @staticmethod
    def build(device: torch.device, generator: torch.Generator | None = None) -> BatchAugment:
        return lambda x: random_crop_flip(x, generator=generator)

    @classmethod
    def file_transforms(cls) -> list[Any]:
        return []


class PolicyCropFlip(Augmentation):
    """An augmentation policy module (options: its constructor's), then random crop + flip; on
    images streamed from disk, torchvision's policy of the same name (``file_policy``)."""

    policy: type[nn.Module]
    file_policy: type

    @classmethod
    def option_names(cls) -> list[str]:
        return list(inspect.signature(cls.policy).parameters)

    @classmethod
    def build(cls, device: torch.device, generator: torch.Generator | None = None,  # type: ignore[override]
              **options: Any) -> BatchAugment:
        policy = cls.policy(**options).to(device)
        return lambda x: random_crop_flip(policy(x, generator), generator=generator)

    @classmethod
    def file_transforms(cls) -> list[Any]:
        return [cls.file_policy()]


@AUGMENTATIONS.register("randaugment")
class RandAugmentCropFlip(PolicyCropFlip):
    policy, file_policy = RandAugment, T.RandAugment


@AUGMENTATIONS.register("autoaugment")
class AutoAugmentCropFlip(PolicyCropFlip):
    policy, file_policy = AutoAugment, T.AutoAugment


def augment_spec(spec: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of an augment given by name or as ``{name: ..., **options}``, validated."""
    options = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = str(options.pop("name", None))
    if name not in AUGMENTATIONS:
        raise ConfigError(f"unknown augment {name!r}{closest(name, AUGMENTATIONS)}; valid: {', '.join(AUGMENTATIONS)}")
    valid = AUGMENTATIONS.get(name).option_names()
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"unknown option {key!r} for augment {name!r}{closest(key, valid)}; valid: {', '.join(valid) or '(none)'}"
            )
    return name, options


def build_augment(spec: str | dict[str, Any], device: torch.device,
                  generator: torch.Generator | None = None) -> BatchAugment | None:
    """The augmentation ``spec`` (a name, or a mapping with the name and options) of uint8 image
    batches on ``device``, or None (``none``), drawing from ``generator`` (passed to a ``build``
    that takes it); bad names, options or values raise a ConfigError."""
    name, options = augment_spec(spec)
    augmentation = AUGMENTATIONS.get(name)
    if "generator" in inspect.signature(augmentation.build).parameters:
        options["generator"] = generator
    try:
        return augmentation.build(device, **options)
    except ValueError as err:
        raise ConfigError(f"augment {name!r}: {err}") from None


def file_transforms(name: str) -> list[Any] | None:
    """The transforms of augment ``name`` for images streamed from disk (see
    :meth:`Augmentation.file_transforms`); a ConfigError if it has none."""
    augmentation = AUGMENTATIONS.get(name)
    try:
        return augmentation.file_transforms()
    except NotImplementedError:
        raise ConfigError(f"augment {name!r} applies to in-memory images only, not to images streamed from disk"
                          ) from None
