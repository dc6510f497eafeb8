"""Writing run files safely: the one atomic-write helper every file the library writes goes
through, and the folder operations around it.

The content goes to a temporary file in the target's folder (``.<name>.<random>.tmp``), is
flushed and fsync'd, given the permissions a plain ``open()`` would give (``0666`` less the umask,
not ``mkstemp``'s ``0600``), and renamed over the target with ``os.replace``. A reader never sees
a half-written file, and a failed write (full disk, no permission) leaves the previous file as it
was and raises :class:`~longtail.errors.StorageError` saying so.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable, IO

from .errors import StorageError, first_line

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open(path, "w") gives a new file


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> Path:
    """Call ``write(handle)`` on a temporary file, then move it onto ``path``; returns the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _unwritable(path, exc) from None
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(exc)
        if cause is not None:
            raise _unwritable(path, cause) from None
        raise
    return path


def _os_error(exc: BaseException) -> BaseException | None:
    """The failed write behind ``exc``: an OSError, what it was raised from, or torch.save's
    ``RuntimeError: [enforce fail at inline_container.cc]``; None for any other exception."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, OSError) and not isinstance(candidate, StorageError):
            return candidate
    return exc if isinstance(exc, RuntimeError) and "inline_container" in str(exc) else None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text), binary=False)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files an interrupted :func:`atomic_write` left in ``folder``."""
    stale = sorted(Path(folder).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a folder that cannot be made is a StorageError naming the fix."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the folder {path} ({first_line(exc)}); make its parent writable or set "
                           "output_dir= to a folder you can write") from None
    return path


def move_aside(path: str | os.PathLike) -> Path:
    """Rename folder ``path`` (``runs/x/seed0``) to ``runs/x/old-seed0-<time>`` beside it (out of
    ``seed*`` globs) and return the new path; nothing is deleted."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"old-{path.name}-{stamp}"), 1
    while aside.exists():
        aside, n = path.with_name(f"old-{path.name}-{stamp}-{n}"), n + 1
    try:
        os.rename(path, aside)
    except OSError as exc:
        raise StorageError(f"cannot move {path} aside to {aside} ({first_line(exc)}); nothing was changed: make "
                           f"{path.parent} writable, or train under a new name= or output_dir=") from None
    return aside


def _unwritable(path: Path, exc: BaseException) -> StorageError:
    kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} was there to lose"
    return StorageError(
        f"cannot write {path} ({first_line(exc)}); {kept}. Free disk space or make "
        f"{path.parent} writable (or set output_dir= to another folder), then run the same command again"
    )
