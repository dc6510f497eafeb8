"""Feature extraction with a frozen encoder.

Stage 2 of the decoupled methods (cRT, LWS, GLAG's AFG, LADC, BWLM) trains only a head on a
frozen encoder; when it needs no image augmentation the features are computed once
(:func:`extract_features`) and kept in memory for the run (``RunContext.features``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import DataError

__all__ = ["extract_features"]


def _module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def extract_features(
    encoder: nn.Module,
    images: torch.Tensor | np.ndarray,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Features ``[N, D]`` (float32, on ``device``) of ``images`` under ``encoder``.

    * ``images``: uint8 ``[N, C, H, W]`` (scaled to 0..1 by /255) or float (taken as already on
      the 0..1 scale); a tensor on any device or a NumPy array. Batches are moved to ``device``
      one at a time, so the images may stay on the CPU.
    * ``mean``/``std``: per-channel normalisation on the 0..1 scale
      (``LongTailedDataset.mean``/``.std``); ``None`` skips normalisation.
    * ``device``: where the encoder runs and the features are returned; default the encoder's
      device. The encoder is moved there if needed.
    * ``autocast_dtype``: e.g. ``torch.bfloat16`` to run under ``torch.autocast``; the features
      are returned in float32 either way.
    * Encoder outputs with more than two dimensions (e.g. ``[B, D, 1, 1]``) are flattened.

    The encoder runs in eval mode under ``torch.no_grad()``; its previous train/eval mode is
    restored afterwards.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dim() < 2:
        raise DataError(f"images must be [N, ...] (e.g. [N, C, H, W]), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else _module_device(encoder)
    if _module_device(encoder) != dev:
        encoder.to(dev)
    is_uint8 = images.dtype == torch.uint8
    if not is_uint8 and not torch.is_floating_point(images):
        raise DataError(f"images must be uint8 or floating point, got {images.dtype}")
    norm_mean = norm_std = None
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ValueError("pass both mean and std, or neither")
        shape = (1, -1) + (1,) * (images.dim() - 2)
        norm_mean = torch.as_tensor(mean, dtype=torch.float32, device=dev).view(shape)
        norm_std = torch.as_tensor(std, dtype=torch.float32, device=dev).view(shape)
    was_training = encoder.training
    encoder.eval()
    outputs: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(dev, non_blocking=True)
                batch = batch.float()
                if is_uint8:
                    batch = batch / 255.0
                if norm_mean is not None:
                    batch = (batch - norm_mean) / norm_std
                if channels_last and batch.dim() == 4:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                if autocast_dtype is not None:
                    with torch.autocast(device_type=dev.type, dtype=autocast_dtype):
                        out = encoder(batch)
                else:
                    out = encoder(batch)
                outputs.append(out.flatten(1).float())
    finally:
        encoder.train(was_training)
    if not outputs:
        raise DataError("extract_features: no images given")
    return torch.cat(outputs, 0)
