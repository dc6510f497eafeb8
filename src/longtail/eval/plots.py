"""Plots of evaluation results: per-class accuracy, classifier weight norms, confusion matrix.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, never through pyplot:
no display is needed and no global figure registry holds them, so each figure is released
when its function returns (the equivalent of ``plt.close``) and the caller's backend is untouched.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_write
from ..errors import DataError

ANNOTATE_MAX_CLASSES = 10
TICK_LABEL_MAX_CLASSES = 30


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure attached to an Agg canvas (no display)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    """Save to ``path`` atomically (creating parent folders) and return the path."""
    path = Path(path)
    return atomic_write(path, lambda handle: fig.savefig(handle, format=path.suffix.lstrip(".") or "png", dpi=150))


def _sorted_runs(runs: dict, what: str):
    """Yield (label, counts, values) with both arrays sorted by training count, largest first."""
    if not runs:
        raise DataError(f"no runs to plot; pass {{label: (class_counts, {what})}}")
    for label, (counts, values) in runs.items():
        counts = np.asarray(counts)
        values = np.asarray(values, dtype=float)  # None (no test samples) becomes NaN: a gap
        if counts.shape != values.shape or counts.ndim != 1:
            raise DataError(
                f"run {label!r}: class_counts has shape {counts.shape} but {what} has shape "
                f"{values.shape}; pass one value per class for both"
            )
        order = np.argsort(-counts, kind="stable")
        yield label, counts[order], values[order]


def plot_per_class_accuracy(runs: dict, path, many_threshold: int = 100, few_threshold: int = 20,
                            class_names=None, label_lowest: int = 3) -> Path:
    """Test accuracy (%) of each class against its training count (log x), one series per run.

    ``runs``: {label: (class_counts, per_class_accuracy)}. Dashed lines mark the
    many/medium/few boundaries. With ``class_names``, the ``label_lowest`` classes of lowest
    accuracy in the first run are labelled by name.
    """
    fig = _new_figure((7, 4.5))
    ax = fig.add_subplot()
    for label, counts, accs in _sorted_runs(runs, "per_class_accuracy"):
        if (counts <= 0).any():
            raise DataError(f"run {label!r} has classes with no training images; a log axis needs counts > 0")
        ax.plot(counts, accs, marker="o", markersize=3, linewidth=0.8, label=label)
    if class_names is not None and runs:
        counts, accs = (np.asarray(v, dtype=float) for v in next(iter(runs.values())))
        finite = np.flatnonzero(np.isfinite(accs))
        for c in finite[np.argsort(accs[finite], kind="stable")][:label_lowest]:
            ax.annotate(str(class_names[c]), (counts[c], accs[c]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for threshold in (few_threshold, many_threshold):
        ax.axvline(threshold, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_weight_norms(runs: dict, path) -> Path:
    """Classifier weight norm of each class, classes sorted by training count (largest first).

    ``runs``: {label: (class_counts, norms)}; one line per run, as in the IWB/BWLM figures.
    """
    fig = _new_figure((7, 4.5))
    ax = fig.add_subplot()
    for label, _, norms in _sorted_runs(runs, "norms"):
        ax.plot(np.arange(len(norms)), norms, linewidth=1.2, label=label)
    ax.set_xlabel("class rank by training count (0 = largest)")
    ax.set_ylabel("weight norm ‖w_c‖")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_confusion(confusion, class_names, path, normalize: bool = True) -> Path:
    """Confusion matrix as an image (rows: true class, columns: predicted class).

    ``normalize``: divide each row by its count (rows without samples stay 0). Class names are
    shown up to 30 classes (``class_names`` may be None), cell values up to 10 classes.
    """
    matrix = np.asarray(confusion, dtype=float)
    num_classes = matrix.shape[0]
    if matrix.shape != (num_classes, num_classes):
        raise DataError(f"confusion must be square C×C, got shape {matrix.shape}")
    if class_names is not None and len(class_names) != num_classes:
        raise DataError(f"{len(class_names)} class names for a {num_classes}-class confusion matrix")
    if normalize:
        rows = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)

    side = min(4 + 0.3 * num_classes, 14)
    fig = _new_figure((side + 1.5, side))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, label="fraction of the true class" if normalize else "samples")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if class_names is not None and num_classes <= TICK_LABEL_MAX_CLASSES:
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks, labels=class_names, rotation=90)
        ax.set_yticks(ticks, labels=class_names)
    if num_classes <= ANNOTATE_MAX_CLASSES:
        for (i, j), value in np.ndenumerate(matrix):
            text = f"{value:.2f}" if normalize else f"{value:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if value > 0.5 * matrix.max() else "black")
    return _save(fig, path)
