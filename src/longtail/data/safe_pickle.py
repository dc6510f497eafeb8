"""Unpickling that runs no code, for the data files that are pickles (CIFAR batches, a dict saved
in a ``.npy``): only numpy arrays, dtypes and scalars, and Python's bytes helper, can be rebuilt;
any other global in the file (``os.system``, ``builtins.open``, a user class) is refused."""
from __future__ import annotations

import codecs
import pickle
from typing import IO, Any

import numpy as np

_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]

# The globals a pickle of numpy arrays and plain containers names: bytes written by Python 3 under
# protocol 2 come as _codecs.encode; numpy's module path differs across numpy versions.
ALLOWED_GLOBALS = {
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
}


class SafeUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"the file names {module}.{name}, which is not a numpy array or a plain value; "
                "unpickling it could run code, so it is not loaded"
            ) from None


def safe_load(handle: IO[bytes], encoding: str = "ASCII") -> Any:
    """``pickle.load(handle)`` through :class:`SafeUnpickler`."""
    return SafeUnpickler(handle, encoding=encoding).load()
