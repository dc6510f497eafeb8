"""Checkpoints: plain data only, written atomically, loaded with ``torch.load(weights_only=True)``.

What the library saves is tensors and plain Python values (dict, list, tuple, str, int, float,
bool, None): :func:`plain` converts numpy arrays and scalars and dataclasses, and refuses
anything else, so every checkpoint written here loads with ``weights_only=True`` (which runs no
code from the file). A file holding other pickled objects is refused with the fix.
"""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import TrainingError, first_line

PLAIN = (str, int, float, bool, type(None))  # exact types: np.float64 is a float subclass


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` as tensors and plain Python values (numpy -> tensors/scalars, dataclasses -> dicts);
    a TypeError names any other object and where it sits."""
    if type(obj) in PLAIN or isinstance(obj, (torch.Tensor, torch.dtype, torch.device)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        values = {key: plain(value, f"{where}[{key!r}]") for key, value in obj.items()}
        if all(values[key] is value for key, value in obj.items()):
            return obj  # unchanged: keeps an OrderedDict state dict's _metadata
        return values
    if isinstance(obj, (list, tuple)):
        items = [plain(value, f"{where}[{i}]") for i, value in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold tensors and plain "
        "values (dict, list, str, int, float, bool, None) only: convert it (e.g. to a dict) before saving"
    )


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(plain(obj))`` to ``path`` through :func:`longtail.atomic.atomic_write` (a full
    disk raises a StorageError saying the previous file is intact)."""
    obj = plain(obj)
    return atomic_write(path, lambda handle: torch.save(obj, handle))


# Checkpoints written before numpy state was stored as tensors hold numpy arrays (the global numpy
# RNG state, uint32, of the code before per-run generators); these globals rebuild such an array
# and run nothing else.
_NUMPY_ARRAYS = [np.arange(1).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``; a clear error if it is unreadable
    or holds pickled Python objects."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist; train first or pass the run folder")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAYS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not even readable as a pickle
            found = []
        if not found:
            raise _unreadable(path, "not a torch checkpoint file") from None
        found = ", ".join(found)
        raise TrainingError(
            f"checkpoint {path} contains pickled Python objects ({found}); longtail loads checkpoints with "
            "torch.load(weights_only=True), which runs no code from the file. If you trust the file, re-save it "
            "with tensors and plain values only: load it with torch.load(path, weights_only=False), replace each "
            "object by a dict/list/tensor, and torch.save the result to the same path"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged file, or a device it cannot be mapped to
        if str(map_location) != "cpu" and _loads_on_cpu(path):
            raise TrainingError(
                f"checkpoint {path} is intact but cannot be loaded onto {map_location} ("
                f"{first_line(exc)}); run where that device exists, or on another one (e.g. engine.device=cpu)"
            ) from None
        raise _unreadable(path, first_line(exc)) from None


def _loads_on_cpu(path: Path) -> bool:
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAYS):
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the file itself is bad
        return False
    return True


def _unreadable(path: Path, cause: str) -> TrainingError:
    return TrainingError(
        f"checkpoint {path} is unreadable ({cause}): it is damaged or not a "
        f"checkpoint. Move it aside (e.g. mv {path} {path}.bad) to train that part again"
    )
