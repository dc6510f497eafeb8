"""Text reports of evaluation results, atomic JSON output and mean ± std over seeds."""
from __future__ import annotations

import io
import json
import math
import statistics
import warnings
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from ..atomic import atomic_write_text
from .metrics import GROUPS, EvalResult, class_groups

NUM_WORST_CLASSES = 3


def _pct(value: float | None) -> str:
    """A percentage with two decimals, or "-" when undefined."""
    return "-" if value is None else f"{value:.2f}"


def _render(table: Table, width: int) -> str:
    """Render a rich table to plain text (no colour codes, no trailing spaces)."""
    console = Console(file=io.StringIO(), record=True, width=width, color_system=None)
    console.print(table)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def _names(class_names, num_classes: int) -> list[str]:
    """The given class names, or "class i" when there are none."""
    return list(class_names) if class_names is not None else [f"class {i}" for i in range(num_classes)]


def format_report(result: EvalResult, class_names=None, title: str | None = None, width: int = 100) -> str:
    """A one-row summary: top-1, macro accuracy and macro-F1, many/medium/few (with class counts),
    ECE, NLL (all in %, NLL in nats).

    The caption names the classes with the lowest accuracy (``class_names`` or "class i").
    """
    many, few = result.thresholds["many"], result.thresholds["few"]
    headers = {
        "many": f"Many >{many} ({result.group_sizes['many']})",
        "medium": f"Medium ({result.group_sizes['medium']})",
        "few": f"Few <{few} ({result.group_sizes['few']})",
    }
    accs = np.array([np.nan if a is None else a for a in result.per_class_accuracy])
    names = _names(class_names, len(accs))
    order = [int(i) for i in np.argsort(accs, kind="stable") if np.isfinite(accs[i])]
    worst = ", ".join(f"{names[i]} {accs[i]:.1f}" for i in order[:NUM_WORST_CLASSES])

    table = Table(title=title, caption=f"lowest: {worst}", box=box.SIMPLE_HEAD)
    for header in ("Top-1", "Macro acc", "Macro F1", *headers.values(), "ECE", "NLL", "N"):
        table.add_column(header, justify="right")
    table.add_row(
        _pct(result.top1),
        _pct(result.macro_accuracy),
        _pct(result.macro_f1),
        *(_pct(getattr(result, g)) for g in GROUPS),
        _pct(result.ece),
        "-" if result.nll is None else f"{result.nll:.4f}",
        str(result.num_samples),
    )
    return _render(table, width)


def format_per_class(result: EvalResult, class_counts, class_names=None, width: int = 100) -> str:
    """One row per class, sorted by training count (largest first; ties keep class order)."""
    counts = np.asarray(class_counts)
    groups = class_groups(counts, result.thresholds["many"], result.thresholds["few"])
    test_counts = np.asarray(result.confusion).sum(axis=1)
    names = _names(class_names, len(counts))

    table = Table(box=box.SIMPLE_HEAD)
    for header, justify in (("#", "right"), ("class", "left"), ("train", "right"),
                            ("group", "left"), ("test", "right"), ("acc %", "right")):
        table.add_column(header, justify=justify)
    for c in np.argsort(-counts, kind="stable"):
        table.add_row(str(c), names[c], str(counts[c]), str(groups[c]), str(test_counts[c]),
                      _pct(result.per_class_accuracy[c]))
    return _render(table, width)


def _json_default(obj):
    """Convert numpy scalars and arrays, which ``json`` does not know."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable; convert it (e.g. result.to_dict())")


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (:func:`longtail.atomic.atomic_write`); returns the path.

    Parent folders are created. NaN/inf (not valid JSON) are written as null, with a warning naming
    where they were, so a result with an undefined metric is never lost. A failed write leaves any
    previous file untouched.
    """
    path = Path(path)
    bad: list[str] = []
    text = json.dumps(_finite_or_none(json.loads(json.dumps(obj, default=_json_default)), "", bad), indent=2,
                      allow_nan=False)
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        warnings.warn(f"{path}: {len(bad)} value(s) are NaN or infinite and are written as null: {shown}",
                      stacklevel=2)
    return atomic_write_text(path, text + "\n")


def _finite_or_none(obj, where: str, bad: list[str]):
    """``obj`` with every NaN/inf float replaced by None; their places appended to ``bad``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(where or "the value")
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v, f"{where}.{k}" if where else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v, f"{where}[{i}]", bad) for i, v in enumerate(obj)]
    return obj


def summarize_seeds(values: list[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (ddof=1) of one metric over seeds.

    The sample std is what papers report as "mean ± std over seeds"; with one value it is NaN.
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"need a non-empty list of finite numbers, got {values!r}")
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return float(arr.mean()), std


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std over seeds of a metric that may be undefined (``None``: e.g. a group
    without classes), the undefined values left out; ``(None, None)`` if none is defined and std
    0.0 for one value (the results files' convention; :func:`summarize_seeds` gives NaN there)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """"mean ± std" with ``digits`` decimals; "mean ± n/a" when std is NaN (a single seed)."""
    spread = "n/a" if math.isnan(std) else f"{std:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread}"
