"""``longtail bench reproduce SPEC``: a method × imbalance factor × seed matrix beside the papers.

A spec (YAML) names the dataset, one data setting per imbalance factor (a prepared file travels
to a GPU machine with the code), the seeds, and the methods (each a config file)::

    name: cifar10_lt_baselines
    dataset: cifar10-lt
    data: {100: {prepared: .prepared/cifar10_lt_if100.ltd}}
    seeds: [0, 1, 2]
    methods: {ce: configs/cifar10_lt/ce.yaml, crt: {config: configs/cifar10_lt/crt.yaml, overrides: [stages.1.epochs=20]}}

Every run lands in ``<runs>/<spec name>/if<IF>/<method>/seed<S>``; finished runs are skipped
and interrupted ones resume, so a matrix can be stopped and restarted, or run in parts with
``--filter`` (each part finishes whole cells). Decoupled methods whose stage 1 is identical
(same data, model, stage-1 settings and seed) share one stage-1 run. Results of every part
merge into ``benchmarks/results/<name>.json`` and ``.md``, with the papers' figures from
``benchmarks/paper_numbers.yaml`` beside ours, labelled with paper, table and row.
``--stack K`` trains compatible runs (engine/stacked.py) K at a time as one grouped network and
says which runs train alone and why.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..atomic import atomic_write_text
from ..config import MOVED_STAGE_OPTIONS, RunConfig, load_config, to_dict
from ..engine.runner import environment, git_commit, run_config, run_dir_of
from ..engine.device import Runtime
from ..errors import ConfigError
from ..eval.report import mean_std, write_json

RESULTS_DIR = Path("benchmarks/results")
PAPER_NUMBERS = Path("benchmarks/paper_numbers.yaml")


@dataclass
class Job:
    """One run of the matrix (a method at one imbalance factor and seed)."""

    method: str
    imbalance_factor: float
    seed: int
    config: RunConfig
    shared_stage1: "Job | None" = None
    result: dict[str, Any] | None = field(default=None, repr=False)


def _stage1_key(config: RunConfig) -> str:
    first = to_dict(config.stages[0])
    first.pop("name")
    for key in MOVED_STAGE_OPTIONS:  # fields added later: at their defaults they leave the key as it was
        if not first[key]:
            first.pop(key)
    engine = to_dict(config.engine)
    numerics = {k: engine[k] for k in ("device", "amp", "channels_last", "cuda_graph", "compile")}
    # a prepared file is the whole dataset (load_dataset ignores the other data fields then)
    data = {"prepared": config.data.prepared} if config.data.prepared else to_dict(config.data)
    blob = json.dumps([data, to_dict(config.model), first, numerics, config.seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_spec(path: Path) -> dict[str, Any]:
    spec = yaml.safe_load(path.read_text())
    missing = {"name", "dataset", "data", "seeds", "methods"} - set(spec)
    if missing:
        raise ConfigError(f"reproduce spec {path} lacks {sorted(missing)}")
    return spec


def plan_jobs(spec: dict[str, Any], runs_dir: Path, methods=None, factors=None, seeds=None, extra=()) -> list[Job]:
    """All jobs of the (filtered) matrix, with shared stage-1 runs attached. Overrides apply in the
    order: the spec's, ``extra`` (``--set``, every run), the method's own.

    Stage-1 providers are found in the whole spec, whatever ``methods`` keeps: a part that runs
    ``crt`` alone reuses the stage 1 of the ``ce`` run of the same spec (trained, or skipped when
    another part already finished it) instead of training a copy of its own."""
    jobs = []
    for factor, data in spec["data"].items():
        factor = float(factor)
        if factors and factor not in factors:
            continue
        for method, entry in spec["methods"].items():
            # a method is a config path, or {config: path, overrides: [key=value, ...]}
            config_path, method_overrides = (entry, []) if isinstance(entry, str) else (entry["config"], entry.get("overrides", []))
            for seed in spec["seeds"] if seeds is None else seeds:
                overrides = [f"data.{k}={v}" for k, v in data.items()] + [
                    f"seed={seed}", f"name={method}", f"output_dir={runs_dir / spec['name'] / f'if{factor:g}'}",
                    "engine.progress=false",
                ] + list(spec.get("overrides", [])) + list(extra) + list(method_overrides)
                jobs.append(Job(method, factor, seed, load_config(Path(config_path), overrides)))
    providers: dict[str, Job] = {}
    for job in jobs:  # single-stage runs provide their stage 1 to decoupled methods
        if len(job.config.stages) == 1:
            providers.setdefault(_stage1_key(job.config), job)
    kept = [job for job in jobs if not methods or job.method in methods]
    for job in kept:
        if len(job.config.stages) > 1 and not job.config.stages[0].init_from:
            key = _stage1_key(job.config)
            if key not in providers:
                provider_config = copy.deepcopy(job.config)  # not reloaded: a recipe's overrides would apply again
                provider_config.stages = provider_config.stages[:1]
                provider_config.name = f"stage1_{key}"
                providers[key] = Job(f"stage1_{key}", job.imbalance_factor, job.seed, provider_config)
            job.shared_stage1 = providers[key]
    needed = [p for p in providers.values() if p not in kept and any(j.shared_stage1 is p for j in kept)]
    return needed + kept


def _attach_stage1(job: Job) -> RunConfig:
    """``job.config``, pointed at the stage-1 weights of the run it shares them with."""
    if job.shared_stage1 is not None:
        stage1 = run_dir_of(job.shared_stage1.config) / f"stage0_{job.shared_stage1.config.stages[0].name}.pt"
        job.config.stages[0].init_from = str(stage1)
    return job.config


def _run(config: RunConfig, command: str) -> dict[str, Any]:
    """Train one run, on a CUDA stream of its own when a GPU is present."""
    if not torch.cuda.is_available():
        return run_config(config, command=command)
    with torch.cuda.stream(torch.cuda.Stream()):
        return run_config(config, command=command)


def _done(job: Job) -> None:
    print(f"  done {job.method} IF {job.imbalance_factor:g} seed {job.seed}: top-1 {job.result['test']['top1']:.2f} "
          f"({job.result['seconds']:.0f} s)", flush=True)


def stack_plan(jobs: list[Job], k: int) -> tuple[list[list[Job]], list[Job]]:
    """``--stack K``: the jobs in stacks of up to K compatible runs (engine/stacked.py), and the
    jobs that run alone; prints which and why."""
    from ..engine.stacked import group_for_stacking

    stacks, alone = group_for_stacking([_attach_stage1(job) for job in jobs], k)
    for members in stacks:
        print("  stack: " + ", ".join(f"{jobs[i].method} IF {jobs[i].imbalance_factor:g} seed {jobs[i].seed}" for i in members))
    for i, reason in sorted(alone.items()):
        print(f"  alone: {jobs[i].method} IF {jobs[i].imbalance_factor:g} seed {jobs[i].seed} ({reason})")
    return [[jobs[i] for i in members] for members in stacks], [jobs[i] for i in sorted(alone)]


def _run_stacks(jobs: list[Job], k: int, command: str) -> list[Job]:
    """Train the jobs that stack, one stack at a time; return the jobs left to run alone."""
    from ..engine.stacked import run_stacked

    stacks, alone = stack_plan(jobs, k)
    for group in stacks:
        try:
            results = run_stacked([job.config for job in group], command=command)
        except ConfigError as err:  # found unstackable once its data and models were built
            print(f"  stack refused, its runs train alone: {err}", flush=True)
            alone += group
            continue
        for job, result in zip(group, results):
            job.result = result
            _done(job)
    return alone


def execute(jobs: list[Job], concurrent: int, command: str, processes: int = 1, stack: int = 0) -> None:
    """Run providers first, then the rest; up to ``concurrent`` runs at once in this process (one
    CUDA stream each), or with ``processes`` > 1 up to that many at once in worker processes (each
    its own CUDA context; eager runs, which are bound by the host, need this to overlap). With
    ``stack`` > 1, compatible runs of each phase first train in stacks of up to that many."""
    if processes > 1 and concurrent > 1:
        raise ConfigError("use --concurrent (threads) or --processes, not both")
    first = [j for j in jobs if any(k.shared_stage1 is j for k in jobs)]
    rest = [j for j in jobs if j not in first]
    for phase in (first, rest):
        if stack > 1:
            phase = _run_stacks(phase, stack, command)
        if processes > 1:
            pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"))
        else:
            pool = ThreadPoolExecutor(max_workers=max(1, concurrent))
        with pool:
            futures = {pool.submit(_run, _attach_stage1(job), command): job for job in phase}
            for future, job in futures.items():
                job.result = future.result()
                _done(job)


def _paper_figures(dataset: str, factor: float, method: str) -> list[dict[str, Any]]:
    if not PAPER_NUMBERS.is_file():
        return []
    out = []
    for table in yaml.safe_load(PAPER_NUMBERS.read_text()):
        if table["dataset"] != dataset or method not in table["rows"]:
            continue
        factors = [float(f) for f in table["imbalance_factors"]]
        if factor in factors:
            value = table["rows"][method]["top1"][factors.index(factor)]
            if value is not None:
                out.append({"value": value, **table["source"], "row": table["rows"][method]["row"]})
    return out


def aggregate(spec: dict[str, Any], jobs: list[Job], command: str) -> list[dict[str, Any]]:
    """One JSON cell per (imbalance factor, method) over its seeds."""
    cells: dict[tuple[float, str], list[Job]] = {}
    for job in jobs:
        if job.method not in spec["methods"]:  # a stage1_<key> provider is no cell
            continue
        cells.setdefault((job.imbalance_factor, job.method), []).append(job)
    out = []
    for (factor, method), group in sorted(cells.items()):
        per_seed = [_seed_record(job, command) for job in group]
        shared = group[0].shared_stage1.config.name if group[0].shared_stage1 else None
        out.append(_cell(spec["dataset"], factor, method, per_seed, shared))
    return out


def _seed_record(job: Job, command: str) -> dict[str, Any]:
    """What a cell keeps of one seed's run: enough to merge seeds run in different parts."""
    test, env = job.result["test"], job.result["env"]
    return {
        "seed": job.seed,
        **{key: test[key] for key in ("top1", "many", "medium", "few")},
        **{key: test.get(key) for key in ("macro_accuracy", "macro_f1")},  # None in runs older than them
        "seconds": job.result["seconds"],
        "run_dir": str(run_dir_of(job.config)),
        "device": env["runtime"].get("gpu", env["runtime"]["device"]),
        "commit": env["commit"],
        "command": command,
    }


def _cell(dataset: str, factor: float, method: str, per_seed: list[dict[str, Any]], stage1_shared_from: str | None) -> dict[str, Any]:
    """A cell's summary (means and sample stds over seeds, paper figures) from its seeds' records."""
    per_seed = sorted(per_seed, key=lambda r: r["seed"])
    unique = lambda key: ", ".join(dict.fromkeys(r[key] for r in per_seed))  # noqa: E731
    top1 = [r["top1"] for r in per_seed]
    cell = {
        "dataset": dataset,
        "imbalance_factor": factor,
        "method": method,
        "seeds": [r["seed"] for r in per_seed],
        "top1": top1,
        "top1_mean": mean_std(top1)[0],
        "top1_std": mean_std(top1)[1],
    }
    for name in ("macro_accuracy", "macro_f1", "many", "medium", "few"):
        values = [r.get(name) for r in per_seed]
        cell[name], cell[f"{name}_std"] = (None, None) if None in values else mean_std(values)
    cell.update(
        device=unique("device"),
        commit=unique("commit"),
        command=unique("command"),
        seconds=sum(r["seconds"] for r in per_seed),
        seconds_per_seed=[r["seconds"] for r in per_seed],
        stage1_shared_from=stage1_shared_from,
        run_dirs=[r["run_dir"] for r in per_seed],
        paper=_paper_figures(dataset, factor, method),
        per_seed=per_seed,
    )
    return cell


def _cell_key(cell: dict[str, Any]) -> tuple:
    return cell["dataset"], cell["imbalance_factor"], cell["method"]


def merge_cells(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells of both lists. Where both hold the same (dataset, IF, method), their seeds are pooled
    (a seed in ``new`` replaces the same seed in ``old``), so a matrix may be run seed by seed."""
    merged = {_cell_key(c): c for c in old}
    for cell in new:
        key = _cell_key(cell)
        if key in merged:
            seeds = {r["seed"]: r for r in merged[key]["per_seed"]}
            seeds.update({r["seed"]: r for r in cell["per_seed"]})
            cell = _cell(cell["dataset"], cell["imbalance_factor"], cell["method"], list(seeds.values()),
                         cell["stage1_shared_from"])
        merged[key] = cell
    return sorted(merged.values(), key=lambda c: (c["imbalance_factor"], c["method"]))


def merge_results(path: Path, name: str, cells: list[dict[str, Any]], part: dict[str, Any]) -> dict[str, Any]:
    """The results file at ``path`` (if any) with ``cells`` merged in and ``part`` appended."""
    record = json.loads(path.read_text()) if path.is_file() else {"name": name, "cells": [], "parts": []}
    return {"name": name, "cells": merge_cells(record["cells"], cells), "parts": record["parts"] + [part]}


def merge_files(paths: list[Path], output: Path) -> dict[str, Any]:
    """Merge results files of parts run elsewhere (seeds pooled per cell, a later file's seed wins);
    write JSON + Markdown."""
    record = None
    for path in paths:
        part = json.loads(Path(path).read_text())
        if record is None:
            record = {"name": part["name"], "cells": [], "parts": []}
        elif part["name"] != record["name"]:
            raise ConfigError(f"{path} holds matrix {part['name']!r}, not {record['name']!r}; merge one matrix at a time")
        record = {"name": record["name"], "cells": merge_cells(record["cells"], part["cells"]),
                  "parts": record["parts"] + part["parts"]}
    write_json(output, record)
    atomic_write_text(output.with_suffix(".md"), markdown(record))
    return record


def markdown(record: dict[str, Any]) -> str:
    """The table: ours (mean ± std over seeds) beside the papers' figures."""
    fmt = lambda m, s: "—" if m is None else f"{m:.2f} ± {s:.2f}"  # noqa: E731
    lines = [
        f"# {record['name']}",
        "",
        "Ours: mean ± sample std over the seeds listed, top-1 % on the balanced test set, model after the last epoch.",
        "Paper: the figure the named seed paper reports for the same setting (the paper's number, not ours).",
        "Run s: the seeds' wall times added up; runs trained concurrently (see each part's --concurrent) overlap,",
        "so a part's wall time (below) is the cost of its cells.",
        "",
        "| IF | method | seeds | ours top-1 | macro F1 | many | medium | few | paper top-1 (source) | run s (sum over seeds) | device | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in record["cells"]:
        paper = "; ".join(f"{p['value']:.2f} ({p['paper']} {p['table']}, row '{p['row']}')" for p in c["paper"]) or "—"
        lines.append(
            f"| {c['imbalance_factor']:g} | {c['method']} | {len(c['seeds'])} | {fmt(c['top1_mean'], c['top1_std'])} | "
            f"{fmt(c.get('macro_f1'), c.get('macro_f1_std'))} | {fmt(c['many'], c['many_std'])} | {fmt(c['medium'], c['medium_std'])} | {fmt(c['few'], c['few_std'])} | "
            f"{paper} | {c['seconds']:.0f} | {c['device']} | {', '.join(x[:10] for x in c['commit'].split(', '))} |"
        )
    for part in record["parts"]:
        lines.append("")
        lines.append(f"Part: `{part['command']}` on {part['device']}, {part['wall_seconds']:.0f} s wall, {part['started']}.")
    return "\n".join(lines) + "\n"


def merge_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="longtail bench merge", description="merge results files of matrix parts")
    parser.add_argument("parts", nargs="+", help="results JSON files of one matrix (seeds pooled per cell; a later file's seed wins)")
    parser.add_argument("--output", required=True, help="merged results JSON (a .md is written beside it)")
    args = parser.parse_args(argv)
    record = merge_files([Path(p) for p in args.parts], Path(args.output))
    print(markdown(record))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longtail bench reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("spec", help="the matrix spec (YAML)")
    parser.add_argument("--methods", nargs="*", help="only these methods")
    parser.add_argument("--imbalance-factors", nargs="*", type=float, help="only these imbalance factors")
    parser.add_argument("--seeds", nargs="+", type=int, help="these seeds instead of the spec's (a subset, or more)")
    parser.add_argument("--concurrent", type=int, default=1, help="runs trained at once in this process, each on its own CUDA stream")
    parser.add_argument("--processes", type=int, default=1,
                        help="runs trained at once in worker processes (for eager runs, which are bound by the host)")
    parser.add_argument("--stack", type=int, default=0, metavar="K",
                        help="train compatible runs (seeds, methods differing in loss, sampler, augmentation, head) "
                             "K at a time as one grouped network (engine/stacked.py); the rest alone, with the reason")
    parser.add_argument("--runs", default="runs/bench", help="folder of the run folders")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="folder of the results JSON/Markdown")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every run (e.g. engine.compile=on); a method's own overrides win")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    args = parser.parse_args(argv)
    spec_path = Path(args.spec)
    spec = load_spec(spec_path)
    command = "longtail bench reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
    jobs = plan_jobs(spec, Path(args.runs), args.methods, args.imbalance_factors, args.seeds, args.set)
    print(f"{len(jobs)} runs ({sum(1 for j in jobs if j.method.startswith('stage1_'))} shared stage-1 runs)")
    for job in jobs:
        shared = f" (stage 1 from {job.shared_stage1.config.name})" if job.shared_stage1 else ""
        print(f"  {job.method} IF {job.imbalance_factor:g} seed {job.seed}{shared}")
    if args.dry_run:
        if args.stack > 1:
            first = [j for j in jobs if any(k.shared_stage1 is j for k in jobs)]
            for phase in (first, [j for j in jobs if j not in first]):
                stack_plan(phase, args.stack)
        return 0
    started, start = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    execute(jobs, args.concurrent, command, args.processes, args.stack)
    wall = time.perf_counter() - start
    runtime = Runtime.resolve(jobs[0].config.engine)
    part = {
        "command": command,
        "device": runtime.describe().get("gpu", str(runtime.device)),
        "commit": git_commit(),
        "wall_seconds": wall,
        "started": started,
        "concurrent": args.concurrent,
        "processes": args.processes,
        "stack": args.stack,
        "env": environment(runtime, command),
    }
    results_dir = Path(args.results)
    path = results_dir / f"{spec['name']}.json"
    record = merge_results(path, spec["name"], aggregate(spec, jobs, command), part)
    write_json(path, record)
    atomic_write_text(results_dir / f"{spec['name']}.md", markdown(record))
    print(markdown(record))
    print(f"matrix part took {wall:.0f} s; wrote {path}")
    return 0
