"""Feature extraction with a frozen encoder, and an on-disk feature cache.

Stage 2 of the decoupled methods (cRT, LWS, GLAG's AFG, LADC, BWLM) trains only a head on a
frozen encoder; when it needs no image augmentation the features are computed once
(:func:`extract_features`) and served from a :class:`FeatureCache`.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import DataError

__all__ = ["extract_features", "FeatureCache", "state_dict_digest"]


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


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def state_dict_digest(module_or_state: nn.Module | dict[str, Any]) -> str:
    """SHA-256 of a state dict: names, dtypes, shapes and raw bytes of every tensor, in name order."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            h.update(f"{value.dtype}{tuple(value.shape)}".encode())
            h.update(_tensor_bytes(value))
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


class FeatureCache:
    """Features stored as ``<root>/<key>.pt``, keyed by encoder weights and data identity.

    ``key = sha256(state_dict digest, data indices, extra)[:32]`` where ``indices`` identify the
    images (e.g. ``ArraySplit.indices``, the positions in the source split) and ``extra`` is any
    other setting that changes the features (normalisation, transform, split name). Files are
    written atomically (:func:`longtail.atomic.atomic_write`), so a reader
    never sees a half-written file. Each file holds ``{"key", "features", "labels" (optional),
    "meta"}`` and is loaded with ``torch.load(weights_only=True)``.

    Typical use::

        cache = FeatureCache(run_dir / "features")
        key = cache.key(model.encoder, split.indices, extra={"split": "train", "mean": mean})
        feats = cache.load(key, device="cuda")
        if feats is None:
            feats = extract_features(model.encoder, split.x, mean, std)
            cache.save(key, feats)
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @staticmethod
    def key(
        encoder: nn.Module | dict[str, Any],
        indices: torch.Tensor | np.ndarray | Sequence[int] | None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Cache key for ``encoder`` (module or state dict), data ``indices`` and ``extra`` settings."""
        h = hashlib.sha256()
        h.update(state_dict_digest(encoder).encode())
        if indices is None:
            h.update(b"indices:none")
        else:
            idx = np.ascontiguousarray(np.asarray(
                indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else indices
            ).astype(np.int64).reshape(-1))
            h.update(f"indices:{idx.shape[0]}".encode())
            h.update(idx.tobytes())
        if extra:
            h.update(repr(sorted((str(k), repr(v)) for k, v in extra.items())).encode())
        return h.hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(
        self,
        key: str,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Path:
        """Write the features (moved to the CPU) atomically; returns the file path."""
        payload = {
            "key": key,
            "features": features.detach().cpu().contiguous(),
            "labels": None if labels is None else torch.as_tensor(labels).detach().cpu(),
            "meta": dict(meta or {}),
        }
        return atomic_write(self.path(key), lambda handle: torch.save(payload, handle))

    def load_entry(self, key: str, device: torch.device | str | None = None) -> dict[str, Any] | None:
        """The stored dict (features/labels on ``device``), or ``None`` if absent.

        Raises :class:`DataError` if the file is unreadable or was stored under another key.
        """
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            entry = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or truncated file
            raise DataError(f"feature cache file {p} is unreadable ({exc}); delete it to recompute") from exc
        if not isinstance(entry, dict) or entry.get("key") != key:
            raise DataError(f"feature cache file {p} does not hold key {key}; delete it to recompute")
        if device is not None:
            entry["features"] = entry["features"].to(device)
            if entry.get("labels") is not None:
                entry["labels"] = entry["labels"].to(device)
        return entry

    def load(self, key: str, device: torch.device | str | None = None) -> torch.Tensor | None:
        """The stored features on ``device`` (default CPU), or ``None`` if not cached."""
        entry = self.load_entry(key, device)
        return None if entry is None else entry["features"]

    def get_or_extract(
        self,
        encoder: nn.Module,
        images: torch.Tensor | np.ndarray,
        indices: torch.Tensor | np.ndarray | Sequence[int] | None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        extra: dict[str, Any] | None = None,
        **extract_kwargs: Any,
    ) -> torch.Tensor:
        """Cached features if present, else :func:`extract_features` and store them.

        The key includes ``mean``, ``std`` and ``extra``; features are returned on the extraction
        device (``extract_kwargs["device"]`` or the encoder's device).
        """
        key = self.key(encoder, indices, extra={**(extra or {}), "mean": mean, "std": std})
        device = extract_kwargs.get("device")
        dev = torch.device(device) if device is not None else _module_device(encoder)
        cached = self.load(key, device=dev)
        if cached is not None:
            return cached
        feats = extract_features(encoder, images, mean, std, **extract_kwargs)
        self.save(key, feats)
        return feats
