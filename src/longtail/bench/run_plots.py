"""Plots over several runs: per-class weight norms (IWB Figs. 1 and 4, BWLM Fig. 5a) and
per-class test accuracy against training count.

Classes are sorted by training-set size, largest first (``eval.plots.plot_weight_norms``)::

    plot_norms({"naive (WD stage 1)": "runs/cifar10_lt_iwb/seed0/stage0_stage1.pt",
                "WD+MaxNorm+CB": "runs/cifar10_lt_wd_maxnorm_cb/seed0",
                "IWB+CB": "runs/cifar10_lt_iwb/seed0"}, "norms.png")

A source (a path) is one of:

- a run folder holding ``results.json`` (its final ``weight_norms`` and ``class_counts``);
- a ``results.json`` file;
- a folder of seed folders (``seed*/results.json``): the norms averaged over the seeds (the seeds
  must share the class counts);
- a stage checkpoint ``stage<i>_<name>.pt`` of a run folder: the norms of its head's
  ``head.fc.weight`` (a plain linear head), with the class counts of that run folder's
  ``results.json``; e.g. the stage-1 model of an IWB run as the "naive" line.

Command line (prints, per run, the rank correlation between class size and weight norm: > 0 when
head classes have the larger norms, the naive pattern; < 0 when the order is inverted, IWB's aim)::

    python -m longtail.bench.run_plots OUT.png "naive=runs/.../stage0_stage1.pt" "IWB+CB=runs/..." [--normalize]
    python -m longtail.bench.run_plots norms.png "CE=runs/.../ce" "LWS=runs/.../lws" --accuracy acc.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from scipy.stats import spearmanr

from ..errors import DataError
from ..eval.plots import plot_per_class_accuracy, plot_weight_norms


def _from_results(path: Path) -> tuple[np.ndarray, np.ndarray]:
    results = json.loads(path.read_text())
    if "weight_norms" not in results or "class_counts" not in results:
        raise DataError(f"{path} has no weight_norms / class_counts: is it a longtail results.json?")
    return np.asarray(results["class_counts"]), np.asarray(results["weight_norms"], dtype=float)


def _from_checkpoint(path: Path) -> tuple[np.ndarray, np.ndarray]:
    results = path.parent / "results.json"
    if not results.is_file():
        raise DataError(f"{path}: the class counts come from {results}, which does not exist (finish the run first)")
    counts, _ = _from_results(results)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = state.get("model", state)
    if "head.fc.weight" not in model:
        heads = sorted(k for k in model if k.startswith("head."))
        raise DataError(
            f"{path}: no plain linear head (head.fc.weight); head keys: {heads}. Use the run folder's "
            "results.json for wrapped heads (their effective weights are recorded there)"
        )
    norms = torch.linalg.vector_norm(model["head.fc.weight"].float(), dim=1).numpy()
    return counts, norms.astype(float)


def load_norms(source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(class_counts, weight_norms)`` of a run folder, results.json, seeds folder or stage checkpoint."""
    path = Path(source)
    if path.is_file():
        return _from_checkpoint(path) if path.suffix == ".pt" else _from_results(path)
    if (path / "results.json").is_file():
        return _from_results(path / "results.json")
    seeds = sorted(path.glob("seed*/results.json"))
    if not seeds:
        raise DataError(f"{path}: no results.json, no seed*/results.json and not a stage checkpoint")
    loaded = [_from_results(p) for p in seeds]
    counts = loaded[0][0]
    if any(not np.array_equal(c, counts) for c, _ in loaded):
        raise DataError(f"{path}: the seed folders have different class counts; plot them separately")
    return counts, np.mean([n for _, n in loaded], axis=0)


def load_per_class_accuracy(source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(class_counts, per-class test accuracy)`` of a run folder or a folder of seeds (mean)."""
    path = Path(source)
    files = [path / "results.json"] if (path / "results.json").is_file() else sorted(path.glob("seed*/results.json"))
    if not files:
        raise DataError(f"{path}: no results.json and no seed*/results.json (finish the run first)")
    runs = [json.loads(f.read_text()) for f in files]
    accuracy = np.array([[np.nan if a is None else a for a in r["test"]["per_class_accuracy"]] for r in runs], dtype=float)
    return np.asarray(runs[0]["class_counts"]), np.nanmean(accuracy, axis=0)


def plot_accuracy(run_dirs: Mapping[str, str | Path], out_png: str | Path) -> Path:
    """Per-class test accuracy against training count, one line per labelled run (seeds averaged)."""
    return plot_per_class_accuracy({label: load_per_class_accuracy(src) for label, src in run_dirs.items()}, out_png)


def norm_trend(counts, norms) -> dict[str, float]:
    """Spearman correlation of class size and norm, and the mean norm of the smaller half of the
    classes over that of the larger half (> 1: tail norms larger, i.e. inverted)."""
    counts, norms = np.asarray(counts), np.asarray(norms, dtype=float)
    order = np.argsort(-counts, kind="stable")
    half = len(order) // 2
    rho = float(spearmanr(counts, norms)[0]) if np.ptp(counts) > 0 and np.ptp(norms) > 0 else float("nan")
    ratio = float(norms[order[half:]].mean() / norms[order[:half]].mean()) if half else float("nan")
    return {"spearman_count_norm": rho, "tail_over_head_norm": ratio}


def plot_norms(run_dirs: Mapping[str, str | Path], out_png: str | Path, normalize: bool = False) -> Path:
    """Plot the per-class weight norms of each labelled source (see the module docstring).

    ``normalize``: divide each run's norms by their mean, so that runs with very different norm
    scales (strong weight decay vs. none) compare by shape.
    """
    runs = {}
    for label, source in run_dirs.items():
        counts, norms = load_norms(source)
        runs[label] = (counts, norms / norms.mean() if normalize else norms)
    return plot_weight_norms(runs, out_png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longtail.bench.run_plots", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("runs", nargs="+", help="LABEL=PATH (run folder, results.json, seeds folder or stage .pt)")
    parser.add_argument("--normalize", action="store_true", help="divide each run's norms by their mean")
    parser.add_argument("--accuracy", help="also write per-class accuracy against training count to this PNG")
    args = parser.parse_args(argv)
    sources = {}
    for item in args.runs:
        if "=" not in item:
            parser.error(f"{item!r} must look like LABEL=PATH")
        label, path = item.split("=", 1)
        sources[label] = path
    for label, path in sources.items():
        trend = norm_trend(*load_norms(path))
        print(f"{label}: spearman(count, norm) = {trend['spearman_count_norm']:+.3f}, "
              f"tail/head mean norm = {trend['tail_over_head_norm']:.3f}")
    print(f"wrote {plot_norms(sources, args.out, normalize=args.normalize)}")
    if args.accuracy:
        print(f"wrote {plot_accuracy(sources, args.accuracy)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
