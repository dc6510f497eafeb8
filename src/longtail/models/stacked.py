"""K independent encoders as one network ("stacking"): convolutions with ``groups=K``.

:func:`stack_encoders` turns K encoders of identical architecture (each initialised on its own,
e.g. by its own seed) into one :class:`StackedEncoder`: every ``Conv2d`` becomes a convolution
with K times the channels and K times the groups, every ``BatchNorm2d`` K times the channels,
and the option-A shortcut pads each member's channels separately. Member k owns channel block k
of every layer, so with the K batches side by side along the channels (``[B, K·C_in, H, W]``)
the network computes exactly the K members' forward passes (up to float rounding: a grouped
convolution may sum in another order than K separate ones), its BatchNorm normalises each
member's channels over that member's batch and keeps each member's running statistics, and the
gradient of the sum of the members' losses is each member's own gradient. SGD (momentum, weight
decay, Nesterov) acts element by element, so one optimizer over the stacked tensors is K
independent optimizers with the same settings.

Member k's weights are channel block k (dim 0) of each stacked tensor: :meth:`StackedEncoder.
member_state_dict` returns them under the member's own names, and :meth:`StackedEncoder.
load_member` copies them back into a member encoder (for evaluation and the run folder).

Stackable encoders are built from the modules in :data:`STACKABLE` only (the CIFAR ResNets
``resnet8`` ... ``resnet110``, ``resnet32x8``, and torchvision's ResNets / ResNeXts); anything else
(e.g. a timm model, a parameter-free module that mixes channels) is refused by
:func:`stack_refusal` with the reason.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv

from longtail.errors import ConfigError
from longtail.models.resnet_cifar import BasicBlockA, ResNetCifar, ShortcutA

# modules whose forward passes act per channel block (containers, per-channel or spatial ops)
CHANNEL_SAFE = (
    ResNetCifar, BasicBlockA, nn.Sequential, nn.ReLU, nn.Identity, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
    tv.ResNet, tv.BasicBlock, tv.Bottleneck,
)
STACKABLE = CHANNEL_SAFE + (nn.Conv2d, nn.BatchNorm2d, ShortcutA)


class StackedShortcutA(nn.Module):
    """Option-A shortcut of K members: each member's channels are subsampled and zero-padded on
    their own (``ShortcutA`` per channel block)."""

    def __init__(self, solo: ShortcutA, k: int):
        super().__init__()
        self.stride, self.pad, self.k = solo.stride, solo.pad, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        b, c, h, w = x.shape
        x = F.pad(x.reshape(b, self.k, c // self.k, h, w), self.pad)  # pads (C, H, W) of each member
        return x.reshape(b, -1, h, w)


def stack_refusal(encoder: nn.Module) -> str:
    """Why ``encoder`` cannot be stacked ('' when it can)."""
    if next(encoder.parameters(), None) is None:
        return "the encoder has no weights (e.g. the identity on feature vectors): there is nothing to stack"
    for name, module in encoder.named_modules():
        if not isinstance(module, STACKABLE):
            return (f"encoder module {name or '(root)'} is a {type(module).__name__}, which stacking does not know "
                    "(stackable: the CIFAR ResNets and torchvision ResNets/ResNeXts)")
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            return f"encoder conv {name} pads with {module.padding_mode!r}"
    if not hasattr(encoder, "out_dim"):
        return "the encoder has no out_dim"
    return ""


def _grouped(module: nn.Module, k: int) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(
            module.in_channels * k, module.out_channels * k, module.kernel_size, module.stride, module.padding,
            module.dilation, module.groups * k, bias=module.bias is not None,
        )
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(module.num_features * k, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
    if isinstance(module, ShortcutA):
        return StackedShortcutA(module, k)
    return module


def _replace(root: nn.Module, k: int) -> nn.Module:
    for name, child in list(root.named_children()):
        setattr(root, name, _replace(child, k))
    return _grouped(root, k)


class StackedEncoder(nn.Module):
    """K encoders as one: inputs ``[B, K·C_in, H, W]`` (member k's batch in channel block k) ->
    features ``[K, B, D]``. ``net`` holds the stacked layers under the members' own names."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 1:
            raise ConfigError("stacking needs at least one member encoder")
        for member in members:
            reason = stack_refusal(member)
            if reason:
                raise ConfigError(f"cannot stack this encoder: {reason}")
        shapes = [{n: tuple(t.shape) for n, t in m.state_dict().items()} for m in members]
        if any(s != shapes[0] for s in shapes[1:]) or any(type(m) is not type(members[0]) for m in members):
            raise ConfigError("stacked members must share the encoder architecture (same names and shapes)")
        self.k = len(members)
        self.out_dim = members[0].out_dim
        template = copy.deepcopy(members[0]).cpu()
        self.net = _replace(template, self.k)
        device = next(members[0].parameters()).device
        self.net.to(device)
        self.load_members(members)

    # ------------------------------------------------------------------ weights
    def load_members(self, members: list[nn.Module]) -> None:
        """Copy every member's weights and buffers into its channel block."""
        states = [m.state_dict() for m in members]
        with torch.no_grad():
            for name, tensor in self.net.state_dict(keep_vars=True).items():
                parts = [s[name] for s in states]
                if tensor.dim() == 0:  # num_batches_tracked: the members step together
                    if any(int(p) != int(parts[0]) for p in parts):
                        raise ConfigError(f"stacked members differ in {name}: {[int(p) for p in parts]}")
                    tensor.copy_(parts[0])
                else:
                    tensor.copy_(torch.cat([p.to(tensor.device) for p in parts], 0))

    def member_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Member ``index``'s weights and buffers under its own names (copies)."""
        out = {}
        for name, tensor in self.net.state_dict().items():
            out[name] = tensor.clone() if tensor.dim() == 0 else tensor.chunk(self.k, 0)[index].clone()
        return out

    def load_member(self, index: int, encoder: nn.Module) -> None:
        """Copy member ``index``'s weights and buffers into ``encoder`` (a solo encoder)."""
        encoder.load_state_dict(self.member_state_dict(index))

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.net(x)  # [B, K·D]
        return feats.reshape(feats.shape[0], self.k, self.out_dim).transpose(0, 1)


def stack_encoders(members: list[nn.Module]) -> StackedEncoder:
    """:class:`StackedEncoder` of ``members`` (their current weights copied in)."""
    return StackedEncoder(members)
