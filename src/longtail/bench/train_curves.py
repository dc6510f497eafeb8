"""``python -m longtail.bench.train_curves RESULTS.json``: training accuracy by epoch, per method.

Reads the run folders a ``bench reproduce`` results file lists (each cell's ``run_dirs``), takes
the first stage's per-epoch ``train_acc`` from each run's ``metrics.jsonl`` and prints (and with
``--output`` writes) a Markdown table of mean ± sample std over the seeds at the chosen epochs,
with the results file, the run folders' commits and seeds: the evidence for "trains like CE".
Training accuracy is the argmax of the plain logits on the training batches as drawn (augmented).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ..atomic import atomic_write_text


def stage_one_accuracy(run_dir: Path) -> dict[int, float]:
    """``{epoch: train_acc}`` of the run's first stage."""
    curve, first = {}, None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        first = first or record.get("stage")
        if record.get("stage") == first and "train_acc" in record:
            curve[int(record["epoch"])] = float(record["train_acc"])
    return curve


def table(results: dict, methods: list[str] | None, epochs: list[int]) -> str:
    fmt = lambda v: "—" if not v else f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.1f}"  # noqa: E731
    lines = ["| method | seeds | " + " | ".join(f"epoch {e}" for e in epochs) + " | commit |",
             "|---|---|" + "---|" * len(epochs) + "---|"]
    for cell in results["cells"]:
        if methods and cell["method"] not in methods:
            continue
        curves = [stage_one_accuracy(Path(d)) for d in cell["run_dirs"]]
        values = [fmt([c[e] for c in curves if e in c]) for e in epochs]
        lines.append(f"| {cell['method']} | {', '.join(map(str, cell['seeds']))} | " + " | ".join(values)
                     + f" | {', '.join(x[:10] for x in cell['commit'].split(', '))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longtail.bench.train_curves", description=__doc__.split("\n")[0])
    parser.add_argument("results", help="a bench reproduce results JSON")
    parser.add_argument("--methods", nargs="*", help="only these methods (default: all cells)")
    parser.add_argument("--epochs", nargs="+", type=int, default=[1, 2, 5, 10, 20, 50])
    parser.add_argument("--output", help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    command = "python -m longtail.bench.train_curves " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"Training accuracy (%, first stage, mean ± sample std over seeds) by epoch, from the run folders of "
            f"`{args.results}`.\n\nCommand: `{command}`\n\n" + table(results, args.methods, args.epochs))
    print(text)
    if args.output:
        atomic_write_text(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
