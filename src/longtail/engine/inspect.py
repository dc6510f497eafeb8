"""Look at run folders: re-evaluate a saved model, summarise several seeds."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import read_run_config
from ..errors import ConfigError
from ..eval.metrics import EvalResult
from ..eval.report import format_mean_std, format_per_class, format_report, summarize_seeds
from .checkpoint import load_checkpoint
from .runner import Run, load_weights


def evaluate_run(run_dir: Path, per_class: bool = False, split: str = "test") -> str:
    """Rebuild the model of ``run_dir`` from its config and latest checkpoint, evaluate a split.
    Read-only: nothing in the run folder is written."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); pass runs/NAME/seedN")
    config = read_run_config(config_path)
    config.output_dir = str(run_dir.parent.parent)
    config.engine.progress = config.engine.tensorboard = False
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    run = Run(config)
    ctx = run.build()
    for kind, stage in zip(ctx.kinds, config.stages[: checkpoint["stage"] + 1]):
        kind.prepare(ctx, stage)
    load_weights(ctx.model, checkpoint["model"], run_dir / "checkpoint.pt")
    if split not in ctx.splits:
        raise ConfigError(f"the run has no {split} split (set data.val_per_class > 0 for a validation split)")
    result = run.evaluate(ctx, split)
    stage = config.stages[checkpoint["stage"]]
    title = f"{config.name} seed {config.seed}: {split}, after stage {stage.name!r} epoch {checkpoint['epoch']}"
    text = format_report(result, ctx.dataset.class_names, title=title)
    if per_class:
        text += "\n" + format_per_class(result, ctx.class_counts, ctx.dataset.class_names)
    return text


def seeds_report(run_dirs: list[Path]) -> str:
    """Mean ± std of top-1, macro accuracy, macro-F1 and many/medium/few over the finished runs given."""
    rows: dict[str, list[EvalResult]] = {}
    for run_dir in run_dirs:
        path = run_dir / "results.json"
        if not path.is_file():
            raise ConfigError(f"{run_dir} has no results.json (the run has not finished)")
        results = json.loads(path.read_text())
        rows.setdefault(results["name"], []).append(EvalResult.from_dict(results["test"]))
    columns = {"top1": "top-1", "macro_accuracy": "macro acc", "macro_f1": "macro F1", "many": "many",
               "medium": "medium", "few": "few"}
    lines = [f"{'run':40s} {'seeds':>5s} " + " ".join(f"{c:>16s}" for c in columns.values())]
    for name, evals in rows.items():
        cells = []
        for attr in columns:
            values = [getattr(e, attr) for e in evals if getattr(e, attr) is not None]
            cells.append(format_mean_std(*summarize_seeds(values)) if values else "n/a")
        lines.append(f"{name:40s} {len(evals):5d} " + " ".join(f"{c:>16s}" for c in cells))
    return "\n".join(lines)
