"""torchvision ResNet / ResNeXt encoders for large images (ImageNet-LT, iNaturalist, Places-LT),
and any timm model as an encoder (``timm:<name>``, optional: ``pip install 'longtail[timm]'``).

Each builder returns the torchvision network with ``fc`` replaced by ``nn.Identity`` (so the
forward pass ends at the pooled features [B, out_dim]) and an ``out_dim`` attribute.
``pretrained=True`` loads torchvision's original ImageNet weights (``IMAGENET1K_V1``, the ones
the long-tailed literature used); it needs the weights in the torch hub cache or internet access.
ImageNet-LT and iNaturalist results are reported from scratch: do not pretrain on ImageNet there.
"""
from __future__ import annotations

from typing import Callable

from torch import nn
from torchvision.models import resnet as tv

from longtail.errors import ConfigError
from longtail.registry import closest


def _encoder(net: tv.ResNet, in_channels: int) -> tv.ResNet:
    """Drop ``fc``, set ``out_dim``; a new stem conv (torchvision's init) if in_channels != 3."""
    if in_channels != 3:
        old = net.conv1
        net.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride,
                              old.padding, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return _headless(net)


def _headless(net: tv.ResNet) -> tv.ResNet:
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


def _pretrained(builder: Callable[..., tv.ResNet], pretrained: bool, in_channels: int) -> tv.ResNet:
    if pretrained and in_channels != 3:
        raise ConfigError(f"pretrained ImageNet weights need 3 input channels, got {in_channels}; "
                          "use in_channels=3 or pretrained=False")
    return _encoder(builder(weights="IMAGENET1K_V1" if pretrained else None), in_channels)


def resnet10(in_channels: int = 3) -> tv.ResNet:
    """ResNet-10: torchvision ResNet with BasicBlock × [1, 1, 1, 1], 512-d features, as in
    Kang et al. (2020)'s decoupling code for ImageNet-LT. No pretrained weights exist."""
    return _encoder(tv.ResNet(tv.BasicBlock, [1, 1, 1, 1]), in_channels)


def resnet50(in_channels: int = 3, pretrained: bool = False) -> tv.ResNet:
    """ResNet-50 (He et al. 2016), 2048-d features (iNaturalist-2018, ImageNet-LT)."""
    return _pretrained(tv.resnet50, pretrained, in_channels)


def resnet152(in_channels: int = 3, pretrained: bool = False) -> tv.ResNet:
    """ResNet-152 (He et al. 2016), 2048-d features (Places-LT, ImageNet-pretrained there)."""
    return _pretrained(tv.resnet152, pretrained, in_channels)


def resnext50_32x4d(in_channels: int = 3, pretrained: bool = False) -> tv.ResNet:
    """ResNeXt-50 32×4d (Xie et al. 2017), 2048-d features (ImageNet-LT)."""
    return _pretrained(tv.resnext50_32x4d, pretrained, in_channels)


def resnet34_cifar_stem(in_channels: int = 3) -> tv.ResNet:
    """torchvision ResNet-34 with a 3×3 stride-1 stem and no max-pool, 512-d features: the
    CIFAR network of the weight-balancing code (Alshammari et al. 2022), which replaces
    ``conv1`` after construction (PyTorch's default conv init) and skips ``maxpool``."""
    net = tv.resnet34()
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return _headless(net)


def timm_encoder(name: str, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    """timm's ``name`` without its classifier (``num_classes=0``: pooled features [B, out_dim]).

    ``out_dim`` is timm's ``head_hidden_size`` (the width of those features; ``num_features``
    before timm 1.0, which lacks it). ``pretrained=True`` downloads timm's weights from the
    Hugging Face Hub (or finds them in its cache).
    """
    try:
        import timm
    except ImportError:
        raise ConfigError(f"encoder 'timm:{name}' needs timm: pip install 'longtail[timm]'") from None
    if not timm.is_model(name):
        raise ConfigError(f"timm has no model {name!r}{closest(name, timm.list_models())}; "
                          "timm.list_models() lists them")
    try:
        net = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_channels)
    except OSError as err:  # pretrained weights neither cached nor downloadable
        raise ConfigError(f"timm could not load the pretrained weights of {name!r} ({err}); they need "
                          "network access to the Hugging Face Hub once (or its cache): use "
                          "pretrained=False offline") from None
    net.out_dim = getattr(net, "head_hidden_size", net.num_features)
    return net
