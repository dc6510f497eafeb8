"""Encoder registry, ``LTModel`` (encoder + head) and ``build_model``.

Encoder names are the registered ones (``ENCODERS``) or ``timm:<name>``, any timm model
(``backbones.timm_encoder``); ``encoder_factory`` resolves both.
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from longtail.errors import ConfigError
from longtail.models import backbones
from longtail.models.heads import HEADS, Head, as_head
from longtail.models.resnet_cifar import CIFAR_DEPTHS, ResNetCifar, resnet32x8_cifar
from longtail.registry import Registry

ENCODERS = Registry("encoder")
TIMM_PREFIX = "timm:"


@ENCODERS.register("identity")
class IdentityEncoder(nn.Identity):
    """Features pass through unchanged (precomputed feature datasets): out_dim = in_dim."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim


for _depth in CIFAR_DEPTHS:
    ENCODERS.register(f"resnet{_depth}")(partial(ResNetCifar, _depth))
ENCODERS.register("resnet32x8")(resnet32x8_cifar)
for _name in ("resnet10", "resnet50", "resnet152", "resnext50_32x4d", "resnet34_cifar_stem"):
    ENCODERS.register(_name)(getattr(backbones, _name))


class LTModel(nn.Module):
    """logits = head(encoder(x)); ``encoder.out_dim`` must equal ``head.in_dim``."""

    def __init__(self, encoder: nn.Module, head: Head | nn.Linear):
        super().__init__()
        self.encoder = encoder
        self.replace_head(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output [B, D]."""
        return self.encoder(x)

    def replace_head(self, head: Head | nn.Linear) -> None:
        """Swap the head (e.g. stage 2: ``LWSHead(model.head)``; a bare ``nn.Linear`` becomes a
        ``LinearHead`` sharing its Parameters); move it to the device yourself."""
        head = as_head(head)
        if head.in_dim != self.encoder.out_dim:
            raise ConfigError(f"head takes {head.in_dim}-d features but the encoder gives "
                              f"{self.encoder.out_dim}-d; build the head with in_dim="
                              f"{self.encoder.out_dim}")
        self.head = head


def encoder_factory(encoder: str) -> Callable[..., Any]:
    """The builder of ``encoder``: ``timm:<name>`` (any timm model) or a registered name."""
    if encoder.startswith(TIMM_PREFIX):
        return partial(backbones.timm_encoder, encoder[len(TIMM_PREFIX):])
    return ENCODERS.get(encoder)


def _has_weights(encoder: str) -> bool:
    return "pretrained" in inspect.signature(encoder_factory(encoder)).parameters


def build_model(encoder: str, num_classes: int, head: str = "linear", in_channels: int = 3,
                in_dim: int | None = None, pretrained: bool = False, **head_options) -> LTModel:
    """Build ``ENCODERS[encoder]`` + ``HEADS[head].build(out_dim, num_classes, **head_options)``.

    ``in_dim`` is the feature size for ``encoder="identity"`` (and only for it); image encoders
    take ``in_channels``. ``pretrained`` loads torchvision's ImageNet weights where they exist,
    or timm's for ``timm:<name>`` (both need a download once).
    """
    factory = encoder_factory(encoder)
    head_cls = HEADS.get(head)
    if (encoder == "identity") != (in_dim is not None):
        raise ConfigError("encoder 'identity' needs in_dim (the feature size), image encoders take "
                          f"in_channels instead; got encoder={encoder!r}, in_dim={in_dim}")
    options = {"in_dim": in_dim} if encoder == "identity" else {"in_channels": in_channels}
    if pretrained:
        if not _has_weights(encoder):
            with_weights = [name for name in ENCODERS if _has_weights(name)]
            raise ConfigError(f"encoder {encoder!r} has no pretrained weights; use "
                              f"pretrained=False, one of {with_weights} or a timm:<name> encoder")
        options["pretrained"] = True
    enc = factory(**options)
    return LTModel(enc, head_cls.build(enc.out_dim, num_classes, **head_options))
