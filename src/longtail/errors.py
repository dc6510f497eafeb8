"""Errors raised on bad input. Each message names the problem and the fix.

The command line prints these (and only these) as one line and exits 2; any other exception is a
bug and keeps its traceback.
"""


class LongTailError(Exception):
    """Base class of the library's own errors."""


class DataError(LongTailError, ValueError):
    """Missing or corrupt data files, wrong shapes, labels out of range, empty classes."""


class ConfigError(LongTailError, ValueError):
    """Unknown config keys, values of the wrong type, inconsistent settings."""


class UnknownNameError(ConfigError, KeyError):
    """A name no registry holds (a loss, sampler, model, head, ...); the message names the closest."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingError(LongTailError, RuntimeError):
    """Non-finite loss or other failure during training (saved work is kept)."""


class StorageError(LongTailError, OSError):
    """A run file cannot be written (permissions, read-only or full disk); earlier files are kept."""


def first_line(exc: BaseException) -> str:
    """``ExcType: first line of its message``, the cause quoted inside a one-line error."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
