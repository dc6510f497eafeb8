"""Per-sample augmentation of uint8 image batches ``[B, C, H, W]`` on the device.

Every image of a batch draws its own random parameters (crop offset, flip, op, magnitude),
and nothing here syncs with the host or has a data-dependent shape, so all of it can be
captured in a CUDA graph. Random numbers come from torch's RNG on the images' device
(pass ``generator`` for a private stream).

* :func:`random_crop_flip` — zero padding + random crop + horizontal flip (the standard
  CIFAR augmentation), one gather.
* :func:`normalize` / :class:`Normalize` — ``(x/255 − mean)/std`` per channel.
* :class:`RandAugment` (Cubuk et al. 2020), :class:`AutoAugment` (Cubuk et al. 2019) —
  torchvision's op lists, magnitude ranges and policies, applied per sample by
  :func:`apply_ops`.
* :class:`Cutout` (DeVries & Taylor 2017).

Cost: :func:`apply_ops` computes each op family on the whole batch and selects per image,
about 200 small kernels per call (launch-bound for CIFAR-sized batches); the modules compile
with ``torch.compile(fullgraph=True)``, which fuses them (RandAugment on 128×3×32×32 in a
CUDA graph on an H100: 0.74 ms eager, 0.10 ms compiled).

Ops follow ``torchvision.transforms`` (its ``_apply_op``, tensor kernels) with the same
arithmetic, so each image comes out as torchvision would make it (bit-exact on CPU in the
tests). Geometric ops fill with 0 (torchvision's default); a custom fill is not offered.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as nnf
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from torch import nn

__all__ = [
    "OPS",
    "AutoAugment",
    "Cutout",
    "Normalize",
    "RandAugment",
    "apply_ops",
    "crop_flip",
    "normalize",
    "random_crop_flip",
]

#: Every op :func:`apply_ops` knows, with torchvision's names.
OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
    "Brightness", "Color", "Contrast", "Sharpness",
    "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert",
)
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_BLEND = ("Brightness", "Color", "Contrast", "Sharpness")
_INTERPOLATIONS = ("nearest", "bilinear")


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(
            f"expected a uint8 image batch [B, C, H, W], got {images.dtype} of shape {tuple(images.shape)}; "
            "augment before normalize(), and add a batch dimension to single images"
        )


def _check_interpolation(interpolation: str) -> str:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    return interpolation


# --------------------------------------------------------------------------- crop + flip


def crop_flip(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """Crop each image at its own offset from its zero-padded version, then flip it.

    Output pixel (i, j) of image b is ``padded[b, :, i + top_b, j' + left_b]`` with
    ``j' = W−1−j`` where ``flip_b`` else ``j``; ``padded`` is the image with ``padding`` zero
    pixels on every side (torchvision ``RandomCrop(size, padding)`` then ``hflip``).
    One gather with computed indices; the padding is never materialised.

    ``top``/``left``: int64 ``[B]`` in ``0..2·padding``; ``flip``: bool ``[B]`` or None.
    """
    batch, channels, height, width = images.shape
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    rows = rows.unsqueeze(0) + (top - padding).unsqueeze(1)  # [B, H] source row
    cols = cols.unsqueeze(0).expand(batch, width)
    if flip is not None:
        cols = torch.where(flip.unsqueeze(1), width - 1 - cols, cols)
    cols = cols + (left - padding).unsqueeze(1)  # [B, W] source column
    valid = ((rows >= 0) & (rows < height)).unsqueeze(2) & ((cols >= 0) & (cols < width)).unsqueeze(1)
    source = rows.clamp(0, height - 1).unsqueeze(2) * width + cols.clamp(0, width - 1).unsqueeze(1)
    out = images.reshape(batch, channels, height * width).gather(
        2, source.reshape(batch, 1, height * width).expand(batch, channels, height * width)
    )
    return out.view(batch, channels, height, width).masked_fill(~valid.unsqueeze(1), 0)


def random_crop_flip(
    images: torch.Tensor, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random H×W crop of the zero-padded image, offsets uniform in ``0..2·padding`` per image
    and per axis, then a horizontal flip with probability 0.5 per image (``flip=True``).

    The CIFAR augmentation of He et al. (2016) used by the long-tailed literature
    (padding 4 for 32×32 images). Draws top, left, then flip; see :func:`crop_flip`.
    """
    _check_images(images)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    batch, device = images.shape[0], images.device
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    flips = torch.rand(batch, generator=generator, device=device) < 0.5 if flip else None
    return crop_flip(images, top, left, flips, padding)


# --------------------------------------------------------------------------- normalisation


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(x/255 − mean)/std`` per channel, computed in float32 and returned as ``dtype``.

    ``mean``/``std`` are on the 0..1 scale (e.g. CIFAR's (0.4914, 0.4822, 0.4465) /
    (0.2023, 0.1994, 0.2010)). Python sequences are copied to the device on each call;
    inside a captured CUDA graph pass device tensors or use :class:`Normalize`.
    """
    _check_images(images)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    if mean.shape[1] != images.shape[1] or std.shape[1] != images.shape[1]:
        raise ValueError(
            f"images have {images.shape[1]} channels but mean/std have {mean.shape[1]}/{std.shape[1]} "
            "values; give one mean and one std per channel"
        )
    return ((images.float() / 255.0 - mean) / std).to(dtype)


class Normalize(nn.Module):
    """:func:`normalize` with mean and std held as buffers (moves with ``.to(device)``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.mean, self.std, self.dtype)


# --------------------------------------------------------------------------- per-sample ops


def _inverse_affine(
    is_op: dict[str, torch.Tensor], magnitude: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Per-image inverse affine matrices ``[B, 2, 3]`` (pixel units, origin at the image
    centre), vectorising torchvision's ``_get_inverse_affine_matrix`` for the op each image
    drew: ShearX/ShearY by atan(m) about the top-left corner (torchvision's ``center=[0, 0]``),
    TranslateX/Y by ``int(m)`` pixels, Rotate by m degrees about the centre; identity for
    every other op. Computed in float64 like torchvision's Python floats."""
    m = magnitude.double()
    zero = torch.zeros_like(m)

    def where(name: str, value: torch.Tensor | float) -> torch.Tensor:
        return torch.where(is_op[name], value, zero) if name in is_op else zero

    rot = where("Rotate", torch.deg2rad(-m))  # F.rotate passes −angle to the matrix
    sx = where("ShearX", torch.atan(m))
    sy = where("ShearY", torch.atan(m))
    tx = where("TranslateX", torch.trunc(m))
    ty = where("TranslateY", torch.trunc(m))
    cx = where("ShearX", -0.5 * width) + where("ShearY", -0.5 * width)
    cy = where("ShearX", -0.5 * height) + where("ShearY", -0.5 * height)

    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    ex, ey = cx + tx, cy + ty
    theta = torch.stack([d, -b, cx - d * ex + b * ey, -c, a, cy + c * ex - a * ey], dim=-1)
    return theta.view(-1, 2, 3).float()


def _affine(images: torch.Tensor, theta: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Warp each image by its own inverse matrix; output grid as torchvision's
    ``_gen_affine_grid`` (pixel centres, normalised after applying theta), zero fill."""
    batch, _, height, width = images.shape
    device = images.device
    base = torch.ones(1, height, width, 3, device=device)
    base[..., 0] = torch.linspace(0.5 - width * 0.5, width * 0.5 - 0.5, width, device=device)
    base[..., 1] = torch.linspace(0.5 - height * 0.5, height * 0.5 - 0.5, height, device=device).unsqueeze(-1)
    scaled = theta.transpose(1, 2).clone()
    scaled[..., 0] /= 0.5 * width
    scaled[..., 1] /= 0.5 * height
    grid = base.view(1, height * width, 3).expand(batch, -1, -1).bmm(scaled).view(batch, height, width, 2)
    warped = nnf.grid_sample(images.float(), grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    return warped.round_().to(torch.uint8)


def _blend(images: torch.Tensor, is_op: dict[str, torch.Tensor], magnitude: torch.Tensor) -> torch.Tensor:
    """Brightness, Color, Contrast, Sharpness as one blend ``(1+m)·x − m·degenerate``
    (torchvision's ``_blend`` with factor 1+m) with each image's own degenerate image:
    black, its greyscale, its mean grey level, or its 3×3-smoothed version (border kept).
    Callers leave out Sharpness on images of side ≤ 2 and Color on one-channel images
    (torchvision returns those unchanged)."""
    x = images.float()
    degenerate = torch.zeros_like(x)
    if "Color" in is_op or "Contrast" in is_op:
        grey = TF.rgb_to_grayscale(images).float()  # uint8 truncation, as torchvision
    if "Color" in is_op:
        degenerate = torch.where(is_op["Color"].view(-1, 1, 1, 1), grey, degenerate)
    if "Contrast" in is_op:
        mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
        degenerate = torch.where(is_op["Contrast"].view(-1, 1, 1, 1), mean, degenerate)
    if "Sharpness" in is_op:
        channels = images.shape[1]
        kernel = torch.ones(3, 3, device=images.device)
        kernel[1, 1].fill_(5.0)  # fill_, not item assignment: no host-to-device copy
        kernel = (kernel / kernel.sum()).expand(channels, 1, 3, 3)
        smooth = x.clone()
        smooth[..., 1:-1, 1:-1] = nnf.conv2d(x, kernel, groups=channels).round_()
        degenerate = torch.where(is_op["Sharpness"].view(-1, 1, 1, 1), smooth, degenerate)
    m = magnitude.view(-1, 1, 1, 1)
    return ((1.0 + m) * x + (-m) * degenerate).clamp_(0, 255).to(torch.uint8)


def _autocontrast(images: torch.Tensor) -> torch.Tensor:
    """Per image and channel, stretch [min, max] to [0, 255] (``torchvision.transforms``'
    tensor autocontrast, written with ``torch.where`` instead of boolean-mask assignment)."""
    x = images.float()
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    scale = torch.where(flat, 1.0, 255.0 / (high - low))
    low = torch.where(flat, 0.0, low)
    return ((x - low) * scale).clamp_(0, 255).to(torch.uint8)


def apply_ops(
    images: torch.Tensor,
    op_index: torch.Tensor,
    magnitude: torch.Tensor,
    ops: Sequence[str] = OPS,
    interpolation: str = "nearest",
) -> torch.Tensor:
    """Apply to each image b the op ``ops[op_index[b]]`` with magnitude ``magnitude[b]``.

    Magnitudes are in torchvision's ``_apply_op`` units: shear factor, translation in pixels
    (truncated to int), rotation in degrees, ``factor − 1`` for the blend ops, bits for
    Posterize, threshold (0..255) for Solarize; ignored by Identity, AutoContrast, Equalize,
    Invert. Geometric ops fill with 0 (torchvision's default ``fill=None``).

    Cost: every op family present in ``ops`` is computed on the whole batch and each image
    keeps its own result by ``torch.where``: one ``grid_sample`` for all geometric ops, one
    blend (with a 3×3 depthwise convolution for Sharpness) for the four colour-factor ops,
    one histogram pass for Equalize, plus a few elementwise passes — about 10 passes over the
    batch per call, whatever mix of ops the images drew, and no host sync.
    """
    _check_images(images)
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        raise ValueError(f"unknown augmentation ops {unknown}; valid ops: {', '.join(OPS)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"ops must not repeat a name, got {list(ops)}")
    _check_interpolation(interpolation)
    magnitude = magnitude.to(device=images.device, dtype=torch.float32)
    channels, height, width = images.shape[-3:]
    is_op = {name: op_index == j for j, name in enumerate(ops)}

    def select(names: Sequence[str], result: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(op_index, dtype=torch.bool)
        for name in names:
            mask = mask | is_op[name]
        return torch.where(mask.view(-1, 1, 1, 1), result, out)

    out = images
    geometric = [name for name in _GEOMETRIC if name in is_op]
    if geometric:
        theta = _inverse_affine(is_op, magnitude, height, width)
        out = select(geometric, _affine(images, theta, interpolation), out)
    # torchvision leaves one-channel images unsaturated and images of side <= 2 unsharpened.
    if channels == 1:
        is_op.pop("Color", None)
    if height <= 2 or width <= 2:
        is_op.pop("Sharpness", None)
    blend = [name for name in _BLEND if name in is_op]
    if blend:
        out = select(blend, _blend(images, is_op, magnitude), out)
    if "Posterize" in is_op:
        shift = 8 - magnitude.long().clamp(0, 8)
        mask = (256 - torch.bitwise_left_shift(torch.ones_like(shift), shift)).to(torch.uint8)
        out = select(["Posterize"], images & mask.view(-1, 1, 1, 1), out)
    if "Solarize" in is_op:
        solarized = torch.where(images >= magnitude.view(-1, 1, 1, 1), 255 - images, images)
        out = select(["Solarize"], solarized, out)
    if "AutoContrast" in is_op:
        out = select(["AutoContrast"], _autocontrast(images), out)
    if "Equalize" in is_op:
        out = select(["Equalize"], TF.equalize(images), out)
    if "Invert" in is_op:
        out = select(["Invert"], TF.invert(images), out)
    return out


def _size_scale(ops: Sequence[str], op_index: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-image factor turning translations given as a fraction of the image into pixels."""
    scale = torch.ones(op_index.shape, device=op_index.device)
    if "TranslateX" in ops:
        scale = torch.where(op_index == ops.index("TranslateX"), float(width), scale)
    if "TranslateY" in ops:
        scale = torch.where(op_index == ops.index("TranslateY"), float(height), scale)
    return scale


def _random_sign(shape: tuple[int, ...], generator, device) -> torch.Tensor:
    return 1.0 - 2.0 * torch.randint(0, 2, shape, generator=generator, device=device).float()


class RandAugment(nn.Module):
    """RandAugment (Cubuk et al. 2020, "RandAugment: practical automated data augmentation
    with a reduced search space"), per image.

    Each image applies ``num_ops`` ops drawn uniformly (with repetition) from torchvision's 14
    (Identity, ShearX, ShearY, TranslateX, TranslateY, Rotate, Brightness, Color, Contrast,
    Sharpness, Posterize, Solarize, AutoContrast, Equalize), each at bin ``magnitude`` of
    ``num_magnitude_bins`` of torchvision's ranges (shear 0..0.3, translate 0..150/331 of the
    image side, rotate 0..30°, colour factors 1 ± 0..0.9, posterize 8..4 bits, solarize
    255..0), with a random sign per image for signed ops. Defaults are torchvision's
    (N = 2, M = 9 of 31 bins). Cost: ``num_ops`` calls of :func:`apply_ops`.
    """

    def __init__(
        self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31, interpolation: str = "nearest"
    ):
        super().__init__()
        if not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude must be in 0..{num_magnitude_bins - 1}, got {magnitude}")
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        self.num_ops, self.magnitude, self.num_magnitude_bins = num_ops, magnitude, num_magnitude_bins
        self.interpolation = _check_interpolation(interpolation)
        # torchvision's op space with image size 1: translations come out as fractions.
        space = T.RandAugment()._augmentation_space(num_magnitude_bins, (1, 1))
        self.ops = tuple(space)
        values = [float(v[magnitude]) if v.ndim else 0.0 for v, _ in space.values()]
        self.register_buffer("magnitudes", torch.tensor(values), persistent=False)
        self.register_buffer("signed", torch.tensor([s for _, s in space.values()]), persistent=False)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images)
        batch, _, height, width = images.shape
        for _ in range(self.num_ops):
            op = torch.randint(0, len(self.ops), (batch,), generator=generator, device=images.device)
            sign = torch.where(self.signed[op], _random_sign((batch,), generator, images.device), 1.0)
            magnitude = self.magnitudes[op] * sign * _size_scale(self.ops, op, height, width)
            images = apply_ops(images, op, magnitude, self.ops, self.interpolation)
        return images

    def extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, magnitude={self.magnitude}, num_magnitude_bins={self.num_magnitude_bins}"


class AutoAugment(nn.Module):
    """AutoAugment (Cubuk et al. 2019, "AutoAugment: learning augmentation strategies from
    data"), per image, with torchvision's policies ("cifar10" by default; "imagenet", "svhn").

    Each image draws one of the policy's 25 sub-policies; each of its two (op, probability,
    magnitude bin) stages is applied with that probability, magnitudes from torchvision's
    10-bin ranges with a random sign per image for signed ops. Cost: two calls of
    :func:`apply_ops`.
    """

    def __init__(self, policy: str = "cifar10", interpolation: str = "nearest"):
        super().__init__()
        try:
            policy_enum = T.AutoAugmentPolicy(policy)
        except ValueError:
            valid = [p.value for p in T.AutoAugmentPolicy]
            raise ValueError(f"unknown AutoAugment policy {policy!r}; valid policies: {valid}") from None
        self.policy = policy
        self.interpolation = _check_interpolation(interpolation)
        sub_policies = T.AutoAugment(policy_enum).policies
        space = T.AutoAugment()._augmentation_space(10, (1, 1))
        names = ["Identity"] + sorted({name for sub in sub_policies for name, _, _ in sub} - {"Identity"})
        self.ops = tuple(names)
        op, prob, mag, signed = [], [], [], []
        for sub in sub_policies:
            op.append([names.index(name) for name, _, _ in sub])
            prob.append([p for _, p, _ in sub])
            mag.append([0.0 if b is None else float(space[name][0][b]) for name, _, b in sub])
            signed.append([space[name][1] for name, _, _ in sub])
        self.register_buffer("stage_op", torch.tensor(op), persistent=False)
        self.register_buffer("stage_prob", torch.tensor(prob), persistent=False)
        self.register_buffer("stage_magnitude", torch.tensor(mag), persistent=False)
        self.register_buffer("stage_signed", torch.tensor(signed), persistent=False)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(images)
        batch, _, height, width = images.shape
        device = images.device
        sub = torch.randint(0, self.stage_op.shape[0], (batch,), generator=generator, device=device)
        for stage in range(self.stage_op.shape[1]):
            applied = torch.rand(batch, generator=generator, device=device) <= self.stage_prob[sub, stage]
            op = torch.where(applied, self.stage_op[sub, stage], 0)
            sign = torch.where(self.stage_signed[sub, stage], _random_sign((batch,), generator, device), 1.0)
            magnitude = self.stage_magnitude[sub, stage] * sign * _size_scale(self.ops, op, height, width)
            images = apply_ops(images, op, magnitude, self.ops, self.interpolation)
        return images

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}"


class Cutout(nn.Module):
    """Cutout (DeVries & Taylor 2017): each image gets one ``size``×``size`` square set to
    ``fill``, centred at a uniformly random pixel (the square may extend past the border,
    which clips it): rows ``[cy − size//2, cy + size//2)``, likewise columns, as in the
    reference code. Paper sizes: 16 (CIFAR-10), 8 (CIFAR-100), 20 (SVHN).

    Works on any dtype. The reference code zeroes the square after normalisation, i.e. fills
    it with the dataset mean colour: apply this after :func:`normalize` (``fill=0``) to
    reproduce that; on uint8 images ``fill=0`` is black.
    """

    def __init__(self, size: int = 16, fill: float = 0.0):
        super().__init__()
        if size < 0:
            raise ValueError(f"Cutout size must be >= 0, got {size}")
        self.size, self.fill = size, fill

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.ndim != 4:
            raise TypeError(f"expected an image batch [B, C, H, W], got shape {tuple(images.shape)}")
        batch, _, height, width = images.shape
        device, half = images.device, self.size // 2
        cy = torch.randint(0, height, (batch, 1), generator=generator, device=device)
        cx = torch.randint(0, width, (batch, 1), generator=generator, device=device)
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        in_rows = (rows >= cy - half) & (rows < cy + half)  # [B, H]
        in_cols = (cols >= cx - half) & (cols < cx + half)  # [B, W]
        mask = in_rows.view(batch, 1, height, 1) & in_cols.view(batch, 1, 1, width)
        return images.masked_fill(mask, self.fill)

    def extra_repr(self) -> str:
        return f"size={self.size}, fill={self.fill}"
