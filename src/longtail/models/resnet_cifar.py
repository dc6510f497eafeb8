"""ResNet for 32×32 images with option-A shortcuts (He et al. 2016, Sec. 4.2).

The architecture is that of Yerlan Idelbayev's ``resnet_cifar`` and of Cao et al. (2019)'s LDAM
code, which nearly every CIFAR-LT paper reuses: a 3×3 stem conv, three stages of (depth − 2)/6
basic blocks of widths 16/32/64, parameter-free option-A shortcuts, global average pooling,
Kaiming-normal weights. The depths ``CIFAR_DEPTHS`` (He et al.'s 20 ... 110, and 8 and 14) are
the encoders ``resnet8`` ... ``resnet110``. ResNet-32 (463,504 encoder parameters) + a linear head with bias
has 470,004 parameters at 100 classes and 464,154 at 10 (the "0.46 M" of the literature).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longtail.errors import ConfigError

CIFAR_DEPTHS = (8, 14, 20, 32, 44, 56, 110)  # registered as encoders "resnet8" ... "resnet110"


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ShortcutA(nn.Module):
    """Option-A shortcut (He et al. 2016): x[:, :, ::s, ::s] zero-padded to ``out_channels``.

    The zero channels are split between both ends, ``(out − in) // 2`` before the input channels
    and the rest after, as ``F.pad(..., (0, 0, 0, 0, planes // 4, planes // 4))`` does in the
    LDAM / Idelbayev code when the width doubles. No parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        before = (out_channels - in_channels) // 2
        self.pad = (0, 0, 0, 0, before, out_channels - in_channels - before)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], self.pad)


class BasicBlockA(nn.Module):
    """y = relu(bn(conv3x3(relu(bn(conv3x3_s(x))))) + shortcut(x)), option-A shortcut when the
    stride or width changes, identity otherwise (He et al. 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        changes = stride != 1 or in_channels != out_channels
        self.shortcut = ShortcutA(in_channels, out_channels, stride) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet encoder: images [B, in_channels, H, W] -> features [B, widths[-1]].

    conv3x3(in_channels -> widths[0]) + BN + ReLU, three stages of n = (depth − 2) / 6
    ``BasicBlockA`` (strides 1, 2, 2), global average pooling (He et al. 2016; Idelbayev's
    resnet_cifar, used by Cao et al. 2019). Conv weights are Kaiming-normal (fan-in, gain √2),
    BN weights 1 and biases 0, as in that code. Global pooling makes any input size ≥ 1 pixel
    work (e.g. 8×8 digits).
    """

    def __init__(self, depth: int = 32, widths: tuple[int, int, int] = (16, 32, 64),
                 in_channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError("ResNetCifar depth must be 6n + 2 with n >= 1 (e.g. "
                              f"{', '.join(map(str, CIFAR_DEPTHS))}); got {depth}")
        if len(widths) != 3:
            raise ConfigError("ResNetCifar needs three stage widths, e.g. (16, 32, 64); "
                              f"got {widths}")
        blocks = (depth - 2) // 6
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, width = [], widths[0]
        for stage, out_width in enumerate(widths):
            layers = []
            for i in range(blocks):
                layers.append(BasicBlockA(width, out_width, 2 if stage and not i else 1))
                width = out_width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.out_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return out.mean(dim=(2, 3))


def resnet32x8_cifar(in_channels: int = 3) -> ResNetCifar:
    """The 8× wider "ResNet-32" of the IWB released code: widths 128/256/512, 512-d features,
    29.51 M encoder parameters (29.56 M with a 100-class linear head). Not the ResNet-32 of the
    literature: use it only under this name."""
    return ResNetCifar(32, (128, 256, 512), in_channels)
