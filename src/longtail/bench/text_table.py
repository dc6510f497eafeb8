"""``python -m longtail.bench.text_table``: the 20 Newsgroups-LT table on the CPU.

Runs the text configs ``configs/newsgroups_lt/<method>.yaml`` of :data:`METHODS` (the five
stage-2 baselines CE, CB, LWS, Balanced Softmax, LADC; the seed methods IWB, GLAG, GHM-CWAP, BWLM
and their closest baselines; logit adjustment and tau-norm) for each seed (default 0, 1, 2; the
long-tailed subset itself is fixed by ``data.selection_seed: 0``, the seed changes initialisation
and sampling), and writes ``benchmarks/results/newsgroups_lt.json`` and ``.md``: top-1 mean ±
sample std over the seeds, many / medium / few (train count > 100 / 20–100 / < 20), the command,
commit, device and seconds. ``--methods ce glag`` runs a subset (in the order given), ``--results``
writes elsewhere. Every config shares the data block and the stage-1 settings; only ``glag`` and ``ladc_val`` add
a validation split (``data.val_per_class``), so they train on 20 fewer posts: the table says so.

The LADC paper's text experiment (its Table 5) is on THUCNews-LT — Chinese news, 10 classes,
backbones trained on the text — a different dataset and setting: its numbers are not comparable
with this table and are not put beside it. The other seed papers have no text experiment.

The embeddings are computed once (minutes on a CPU) and cached in ``.data/embeddings``; every run
after that takes seconds.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import data_name, load_config
from ..atomic import atomic_write_text
from ..engine import runner
from ..engine.runner import environment, git_commit, run_config
from ..engine.device import Runtime
from ..errors import TrainingError
from ..eval.report import mean_std, write_json

CONFIG_DIR = Path("configs/newsgroups_lt")
METHODS = {
    "ce": "CE, linear classifier on the features (instance sampling)",
    "cb": "CB loss (softmax CE weighted by effective number, beta 0.9999)",
    "lws": "CE classifier + LWS (per-class scale, class-balanced sampling)",
    "balanced_softmax": "Balanced Softmax (CE on z + log n)",
    "ladc": "CE classifier + LADC stage 2 (calibrated tail features, LWS-Plus)",
    "ladc_val": "LADC with beta chosen on a validation split (0.4 / 0.7 / 1.0 / 1.3)",
    "ladc_uncalibrated": "LADC's stage 2 (sampler, LWS-Plus) without calibrated features",
    "ladc_class_sampling": "LADC with Eq. 13 read literally (class i drawn ~ n_1/n_i^tau; ours reads it per post)",
    "iwb": "IWB+CB: wd 1.5e-3 CE classifier + CB loss and KL on the weight norms (lambda 0.15)",
    "wd_maxnorm_cb": "WD+MaxNorm+CB: wd 1.5e-3 CE classifier + CB loss, weight decay, per-class norm cap",
    "glag": "GLAG: GraLoss classifier + AFG stage 2 (generated tail features, LWS-Plus, KD, beta on val)",
    "ghm_cwap": "GHM-CWAP loss (gradient harmonising inside each class on a per-step window, margins, AURA)",
    "ghm_cwap_epoch": "GHM-CWAP on the previous epoch's histograms (Algorithm 1's timing)",
    "ghm_cwap_global": "GHM-CWAP with W = S / v^alpha, one S for all classes (a class re-weighting; the default before issue 24)",
    "ghm_cwap_printed": "GHM-CWAP with Eq. 1 as printed, W = S_c / v^alpha (class size multiplies the weights)",
    "ghm_cwap_cap2": "GHM-CWAP with the intra-category weights capped at 2 (ours)",
    "ghm_cwap_r": "GHM-CWAP ablation R: intra-category weights only (URA, no margins)",
    "ghm_cwap_a": "GHM-CWAP ablation A: margins only (AURA, no intra-category weights)",
    "seesaw": "Seesaw loss (p 0.8, q 2)",
    "bwlm": "BWLM: head-half stage 1 + new layer on the balanced review set (BFS loss, weight decay)",
    "bwlm_full_counts": "BWLM with stage-2 losses on the full training counts (label prior corrected twice)",
    "bwlm_naive": "CE with wd 1.5e-3 (BWLM's 'naive'; the stage 1 of iwb and wd_maxnorm_cb)",
    "logit_adjusted": "Logit-adjusted loss, tau 1 (equal to Balanced Softmax)",
    "tau_norm": "CE classifier + tau-normalisation, tau = 1",
}
NAME = "newsgroups_lt"
NOT_COMPARABLE = (
    "The LADC paper's text results (Table 5) are on THUCNews-LT (Chinese news, 10 classes, IF 100, "
    "TextCNN/TextRNN/Transformer trained on the text): a different dataset and setting, so its numbers "
    "are not comparable with this table and are not listed here. The other seed papers (IWB, GLAG, GHM-CWAP, "
    "BWLM) have no text experiment."
)


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def aggregate(results: dict[str, list[dict[str, Any]]], failures: dict[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """One row per method: mean ± std of top-1 and of the many/medium/few groups over its seeds
    that finished; ``failed`` lists the seeds that stopped with a TrainingError (e.g. divergence)."""
    rows = []
    failures = failures or {}
    for method, runs in results.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        row: dict[str, Any] = {"method": method, "description": METHODS.get(method, ""), "seeds": [r["seed"] for r in runs],
                               "failed": failures.get(method, [])}
        for key in ("top1", "macro_accuracy", "macro_f1", "many", "medium", "few"):
            values = [r["test"].get(key) for r in runs]
            row[key], row[f"{key}_std"] = mean_std(values)
            if key == "top1":
                row["top1_per_seed"] = values
        row["group_sizes"] = runs[0]["test"]["group_sizes"]
        row["class_counts"] = runs[0]["class_counts"]
        row["val_policy"] = (runs[0].get("dataset_meta") or {}).get("val_policy") or {}
        row["val_per_class"] = row["val_policy"].get("per_class", 0)
        row["seconds_per_seed"] = [r["seconds"] for r in runs]
        row["stage_options"] = runs[0].get("stage_options")
        row["stage_records"] = runs[0].get("stage_records")  # absent in results written before it
        rows.append(row)
    return rows


def markdown(record: dict[str, Any]) -> str:
    fmt = lambda m, s: "—" if m is None else f"{m:.2f} ± {s:.2f}"  # noqa: E731
    data = record["dataset"]
    lines = [
        f"# {data.get('title') or '20 Newsgroups-LT (IF 100) on frozen all-MiniLM-L6-v2 embeddings'}",
        "",
        f"Ours: mean ± sample std over seeds {record['seeds']}, top-1 % on {data.get('test_set') or 'the full bydate test split'} "
        f"({data['test_size']} items), model after the last epoch. Training items per class (class 0 "
        f"= {data['class_names'][0]}): {data['class_counts']} ({data['train_size']} in all); groups: "
        "many > 100, medium 20–100, few < 20 training items.",
        "",
        "| method | what | top-1 | macro acc | macro F1 | many | medium | few | s / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    other_data = [r for r in record["rows"] if r["class_counts"] != data["class_counts"]]
    failed = [r for r in record["rows"] if r.get("failed")]
    for r in record["rows"]:
        mark = (" *" if r in other_data else "") + (" †" if r in failed else "")
        lines.append(
            f"| {r['method']}{mark} | {r['description']} | {fmt(r['top1'], r['top1_std'])} | "
            f"{fmt(r.get('macro_accuracy'), r.get('macro_accuracy_std'))} | {fmt(r.get('macro_f1'), r.get('macro_f1_std'))} | "
            f"{fmt(r['many'], r['many_std'])} | "
            f"{fmt(r['medium'], r['medium_std'])} | {fmt(r['few'], r['few_std'])} | "
            f"{statistics.mean(r['seconds_per_seed']):.1f} |"
        )
    lines += [
        "",
        f"Data: {data['description']}",
        *(f"\\* {r['method']}: other training items, {sum(r['class_counts'])} in all ({r['class_counts']})"
          + _val_note(r) for r in other_data),
        *(
            f"† {r['method']}: mean over seeds {r['seeds']} only; seed {f['seed']} stopped: {f['error']}"
            for r in failed for f in r["failed"]
        ),
        *(f"{method}: no seed finished; {f['error']}" for method, fs in record.get("failed_rows", {}).items() for f in fs),
        f"Embedder: {data['embedder']}. Dataset preparation in this run: {record['dataset_seconds']:.1f} s "
        "(embeddings are cached in .data/embeddings; the first preparation embeds the texts, minutes on a CPU).",
        "",
        *((record["not_comparable"], "") if record.get("not_comparable") else ()),
        f"Command: `{record['command']}` — commit {record['commit']}, device {record['device']}, "
        f"{record['wall_seconds']:.0f} s wall, {record['started']}.",
    ]
    return "\n".join(lines) + "\n"


def _val_note(row: dict[str, Any]) -> str:
    """The footnote of a row with a validation split: its rule, counts and the classes it lacks."""
    policy = row.get("val_policy") or {}
    if not row["val_per_class"]:
        return "."
    if "val_counts" not in policy:  # 20NG-LT: left-out posts (validation.balanced_validation_split)
        return (f": data.val_per_class = {row['val_per_class']}, a balanced validation split of {row['val_per_class']} "
                "posts per class from the training posts left out of the subset (a class without enough left over "
                "lends its last selected posts); every other row trains on the shared posts above.")
    missing = policy.get("classes_without_val") or []
    return (f": data.val_per_class = {row['val_per_class']}, held out of the training items, per class "
            f"min({row['val_per_class']}, floor({policy['max_fraction']} n_c)) (validation items per class "
            f"{policy['val_counts']}); " + (f"{len(missing)} classes too small to lend one ({', '.join(missing)}) have "
            "no validation item, so the selection on it does not see them; " if missing else "")
            + "every other row trains on the shared items above.")


def resolve_methods(config_dir: Path, methods: list[str] | None) -> dict[str, Path]:
    """Row name -> config file. A name is ``config_dir/<name>.yaml`` or a config file path; no names:
    :data:`METHODS` for the 20NG-LT folder, else every ``*.yaml`` in ``config_dir`` (sorted)."""
    if not methods:
        methods = list(METHODS) if config_dir == CONFIG_DIR else sorted(p.stem for p in config_dir.glob("*.yaml"))
    out = {}
    for m in methods:
        path = config_dir / f"{m}.yaml"
        if not path.is_file() and Path(m).is_file():
            path = Path(m)
        if not path.is_file():
            known = sorted(p.stem for p in config_dir.glob("*.yaml"))
            raise SystemExit(f"--methods {m}: no {path} and no such config file; configs in {config_dir}: {', '.join(known)}")
        out[Path(m).stem] = path
    return out


def _own_data_description(data, dataset) -> str:
    """What was run on own data: the file, how it was subsampled (the profile only where it was used)."""
    if data.subsample == "profile":
        how = (f"made long-tailed by the {data.profile} profile, imbalance factor {data.imbalance_factor:g} "
               f"({data.selection} selection, seed {data.selection_seed})")
    else:
        how = "used as it is (data.subsample none: the natural class counts)"
    return (f"{dataset.meta.get('source')}, {how}; {dataset.num_classes} classes ({', '.join(dataset.class_names)}); "
            f"{len(dataset.test)} test items.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m longtail.bench.text_table",
        description=__doc__.split("\n")[0],
        epilog="A subset, written elsewhere: python -m longtail.bench.text_table --methods ce iwb glag --seeds 0 "
        "--runs /tmp/ng/runs --results /tmp/ng/results",
    )
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="run seeds (default 0 1 2)")
    parser.add_argument("--methods", nargs="*", default=None, metavar="METHOD",
                        help="rows in the order given: config names in --configs, or config files (default: for "
                        "configs/newsgroups_lt the table order " + ", ".join(METHODS) + "; else every config in the folder)")
    parser.add_argument("--configs", default=str(CONFIG_DIR), help="folder of the configs (any dataset: data.dataset text/features)")
    parser.add_argument("--name", default=None, help="results file stem (default newsgroups_lt for 20NG, else the dataset name)")
    parser.add_argument("--runs", default=None, help="folder of the run folders (default runs/<the data's name>)")
    parser.add_argument("--results", default="benchmarks/results", help="folder of the results JSON/Markdown")
    parser.add_argument("--resume", action="store_true", help="reuse finished run folders instead of re-running")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override for every run")
    args = parser.parse_args(argv)
    command = " ".join(["python -m longtail.bench.text_table", *(argv if argv is not None else sys.argv[1:])])
    if args.threads:
        torch.set_num_threads(args.threads)
    started, start = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    config_dir = Path(args.configs)
    args.methods = resolve_methods(config_dir, args.methods)
    data = data_name(load_config(next(iter(args.methods.values())), args.overrides).data)
    common = ["engine.device=cpu", "engine.progress=false", f"output_dir={args.runs or 'runs/' + data}", *args.overrides]
    results: dict[str, list[dict[str, Any]]] = {}
    failures: dict[str, list[dict[str, Any]]] = {}
    configs = {m: load_config(args.methods[m], common) for m in args.methods}
    # the table's data block: the shared one (no validation split) when the subset has it
    first = next((c for c in configs.values() if not c.data.val_per_class), configs[next(iter(args.methods))])
    t0 = time.perf_counter()
    dataset = runner.load_dataset(first.data)  # embeds (or reads the cache) once, before timing runs
    dataset_seconds = time.perf_counter() - t0
    for method in args.methods:
        for seed in args.seeds:
            config = load_config(args.methods[method], [*common, f"seed={seed}", f"name={method}"])
            try:
                result = run_config(config, command=command, fresh=not args.resume)
            except TrainingError as exc:  # a run that diverges is reported in the table, not fatal to it
                failures.setdefault(method, []).append({"seed": seed, "error": str(exc)})
                print(f"{method} seed {seed}: stopped: {exc}", flush=True)
                continue
            results.setdefault(method, []).append(result)
            test = result["test"]
            print(f"{method} seed {seed}: top-1 {test['top1']:.2f} (many {_num(test['many'])}, "
                  f"medium {_num(test['medium'])}, few {_num(test['few'])}) {result['seconds']:.1f} s", flush=True)
    runtime = Runtime.resolve(first.engine)
    counts = dataset.class_counts.tolist()
    is_20ng = dataset.name == "newsgroups-lt"
    name = args.name or (NAME if is_20ng else data)
    imbalance = max(counts) / max(1, min(counts))
    record = {
        "name": name,
        "seeds": args.seeds,
        "rows": aggregate(results, failures),
        "failed_rows": {m: f for m, f in failures.items() if m not in results},
        "dataset": {
            "name": dataset.name,
            "class_names": dataset.class_names,
            "class_counts": counts,
            "train_size": int(sum(counts)),
            "test_size": int(len(dataset.test)),
            "embedder": dataset.meta.get("embedder"),
            "meta": dataset.meta,
            "title": None if is_20ng else (
                f"{dataset.name}: {dataset.num_classes} classes, imbalance {imbalance:.0f} "
                f"(train counts {max(counts)}..{min(counts)}), features from {dataset.meta.get('embedder') or 'a frozen encoder'}"
            ),
            "test_set": None if is_20ng else f"the test split of {Path(str(dataset.meta.get('source'))).name}",
            "description": (
                "20news-bydate; headers, footers and quotes removed (scikit-learn's rules); classes relabelled "
                "largest first by bydate training count; exponential profile n_c = int(600·0.01^(c/19)); "
                "seeded shuffle selection (seed 0); full bydate test split."
            ) if is_20ng else _own_data_description(first.data, dataset),
        },
        "dataset_seconds": dataset_seconds,
        "not_comparable": NOT_COMPARABLE if is_20ng else "",
        "command": command,
        "commit": git_commit(),
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"{torch.get_num_threads()} torch threads)",
        "wall_seconds": time.perf_counter() - start,
        "started": started,
        "env": environment(runtime, command),
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", record)
    atomic_write_text(out / f"{name}.md", markdown(record))
    print(markdown(record))
    print(f"wrote {out / (name + '.json')} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
