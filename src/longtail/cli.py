"""``longtail train|eval|report|data|bench`` — the command line.

Examples::

    longtail train                                  # built-in default: digits-LT, CE, CPU-friendly
    longtail train configs/cifar10_lt/ce.yaml data.root=.data seed=1
    longtail eval runs/cifar10_lt_ce/seed0
    longtail report runs/cifar10_lt_ce/seed*
    longtail data info configs/cifar10_lt/ce.yaml
    longtail data prepare configs/cifar10_lt/ce.yaml .prepared/cifar10_lt_if100.ltd
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .errors import ConfigError, LongTailError


def _command_line() -> str:
    return "longtail " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _load(config: str | None, overrides: list[str]):
    from .config import load_config

    return load_config(config, overrides)


def _config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """The config file (the one argument that is not ``key=value``; None: the built-in default)
    and the overrides, wherever the file stands among them."""
    files = [a for a in items if "=" not in a or Path(a).exists()]
    if len(files) > 1:
        raise ConfigError(f"more than one config file given ({', '.join(files)}); pass one, then key=value overrides")
    return (files[0] if files else None), [a for a in items if a not in files]


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.runner import report, run_config

    config_path, overrides = _config_and_overrides([a for a in (args.config, *args.overrides) if a is not None])
    config = _load(config_path, overrides)
    if args.no_progress:
        config.engine.progress = False
    if args.threads:
        config.engine.cpu_threads = args.threads
    results = run_config(config, command=_command_line(), fresh=args.fresh)
    if results["env"]["runtime"].get("rank", 0) == 0:  # under torchrun, rank 0 reports
        print(report(results))
        print(f"run folder: {Path(config.output_dir) / config.name / f'seed{config.seed}'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine.inspect import evaluate_run

    print(evaluate_run(Path(args.run), per_class=args.per_class, split=args.split))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .engine.inspect import seeds_report

    print(seeds_report([Path(r) for r in args.runs]))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data.factory import load_dataset

    config = _load(args.config, args.overrides)
    dataset = load_dataset(config.data)
    if args.action == "info":
        counts = dataset.class_counts
        info = {
            "name": dataset.name,
            "num_classes": dataset.num_classes,
            "train": len(dataset.train),
            "val": len(dataset.val) if dataset.val is not None else 0,
            "test": len(dataset.test),
            "imbalance_factor": round(dataset.imbalance_factor, 3),
            "class_counts": counts.tolist(),
            "meta": dataset.meta,
        }
        print(json.dumps(info, indent=2, default=str))
        return 0
    from .data.prepared import save_prepared

    if not args.output:
        raise LongTailError("data prepare needs an output path: longtail data prepare CONFIG OUT.ltd")
    path = save_prepared(dataset, args.output)
    print(f"wrote {path} ({Path(path).stat().st_size / 2**20:.1f} MiB, {len(dataset.train)} train, {len(dataset.test)} test)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "speed":
        from .bench.speed import main as speed_main

        return speed_main(args.rest)
    if args.what == "merge":
        from .bench.reproduce import merge_main

        return merge_main(args.rest)
    from .bench.reproduce import main as reproduce_main

    return reproduce_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longtail", description="Long-tailed classification toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train and evaluate a config (default: built-in digits-LT)")
    train.add_argument("config", nargs="?", help="a YAML config (omit for the built-in default)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stages.0.epochs=10 seed=1")
    train.add_argument("--fresh", action="store_true",
                       help="start over: once the new run is built and checked, the existing run folder is moved "
                            "aside (old-seedN-<time>), not deleted")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (engine.cpu_threads; 0: the config's)")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a finished or interrupted run from its run folder")
    ev.add_argument("run", help="run folder (runs/NAME/seedN)")
    ev.add_argument("--split", default="test", choices=["test", "val"])
    ev.add_argument("--per-class", action="store_true", help="also print the per-class table")
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="summarise run folders (mean ± std over seeds)")
    rep.add_argument("runs", nargs="+", help="run folders")
    rep.set_defaults(func=cmd_report)

    data = sub.add_parser("data", help="inspect or prepare a dataset")
    data.add_argument("action", choices=["info", "prepare"])
    data.add_argument("config", nargs="?", help="a YAML config whose data section is used")
    data.add_argument("output", nargs="?", help="prepare: the output file")
    data.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override")
    data.set_defaults(func=cmd_data)

    bench = sub.add_parser("bench", help="speed and reproduction benchmarks")
    bench.add_argument("what", choices=["speed", "reproduce", "merge"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the benchmark (see --help)")
    bench.set_defaults(func=cmd_bench)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``train`` takes its options before, between or after the ``key=value``
    overrides (``longtail train name=x --no-progress seed=1``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or args.command != "train"]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except LongTailError as exc:  # the library's own errors: one line naming the problem and the fix
        print(f"longtail: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longtail: interrupted; the checkpoints written so far are intact and the same command resumes "
              "from the last one", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
