"""Errors raised on bad input. Each message names the problem and the fix."""


class LongTailError(Exception):
    """Base class of the library's own errors."""


class DataError(LongTailError, ValueError):
    """Missing or corrupt data files, wrong shapes, labels out of range, empty classes."""


class ConfigError(LongTailError, ValueError):
    """Unknown config keys, values of the wrong type, inconsistent settings."""


class TrainingError(LongTailError, RuntimeError):
    """Non-finite loss or other failure during training (saved work is kept)."""
