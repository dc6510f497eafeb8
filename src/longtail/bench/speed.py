"""``longtail bench speed``: the conventional loop and the fast path, side by side, one process.

Measures, on the same data, model and recipe (CE, ResNet-32, bs 128, 200-epoch schedule):

1. the conventional loop (:mod:`longtail.bench.conventional`) for ``--conventional-epochs``
   epochs; its 200-epoch time is extrapolated from the mean of the measured epochs after the
   first, and labelled as such;
2. our eager fp32 path (device-resident data, no CUDA graph, no bf16, no channels_last) for
   ``--eager-epochs`` epochs, extrapolated the same way;
3. our fast path (CUDA graph, bf16, channels_last, fused SGD) for the full ``--epochs``,
   measured whole, in each of ``--variants`` (:data:`FAST_VARIANTS`: plain, with
   ``engine.compile=on``, either without channels_last, compiled without cuDNN autotuning); one-off capture/compilation time
   reported separately. A short ``--epochs 20`` call is a cheap probe of which variant is fastest;
4. a classifier-only stage 2 (LWS, 10 epochs on cached features) on top of the fast stage 1;
5. ``stacked<K>`` variants (e.g. ``--variants fast stacked3``): K seeds trained as one stack
   (engine/stacked.py) against one run alone and against the K runs on K CUDA streams at once, same
   process, same fast-path settings.

Writes a JSON record (device, commit, versions, command, every timing) and prints a table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..config import load_config
from ..data.factory import load_dataset
from ..engine.runner import environment, run_config
from ..engine.device import Runtime
from ..eval.report import write_json
from .conventional import run_conventional


# fast-path variants: name -> (label, engine overrides)
FAST_VARIANTS = {
    "fast": ("longtail fast path", []),
    "fast_compiled": ("longtail fast path + torch.compile", ["engine.compile=on"]),
    "fast_nchw": ("longtail fast path, NCHW", ["engine.channels_last=off"]),
    "fast_compiled_nchw": ("longtail fast path + compile, NCHW", ["engine.compile=on", "engine.channels_last=off"]),
    "fast_autotune": ("longtail fast path + cuDNN autotuning", ["engine.cudnn_benchmark=on"]),
    "fast_compiled_autotune": ("longtail fast path + compile + cuDNN autotuning", ["engine.compile=on", "engine.cudnn_benchmark=on"]),
}


def _variant(name: str) -> str:
    """A ``--variants`` entry: a fast-path variant or ``stacked<K>`` (K >= 2)."""
    if name in FAST_VARIANTS or (name.startswith("stacked") and name[7:].isdigit() and int(name[7:]) >= 2):
        return name
    raise argparse.ArgumentTypeError(f"unknown variant {name!r}; valid: {', '.join(FAST_VARIANTS)}, stacked<K> (K >= 2)")


def _ce_config(data_args: list[str], out: str, epochs: int, extra: list[str]):
    overrides = data_args + [f"output_dir={out}", "engine.checkpoint_every=0", "engine.progress=false"]
    if epochs != 200:
        overrides += [f"stages.0.epochs={epochs}", "stages.0.schedule.milestones=[]"]
    return load_config(mapping={"method": "ce", "name": "speed_ce"}, overrides=overrides + extra)


def _extrapolate(epoch_seconds: list[float], epochs: int) -> float:
    steady = epoch_seconds[1:] or epoch_seconds
    return statistics.mean(steady) * epochs


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--cpu" in argv:  # the CPU step-throughput comparison (bench/cpu_speed.py)
        from .cpu_speed import main as cpu_main

        return cpu_main([a for a in argv if a != "--cpu"])
    parser = argparse.ArgumentParser(prog="longtail bench speed", description=__doc__.split("\n")[0])
    parser.add_argument("--prepared", help="a prepared dataset file (default: CIFAR-10-LT IF 100 from --root)")
    parser.add_argument("--root", default=".data", help="folder holding cifar-10-batches-py")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--conventional-epochs", type=int, default=4)
    parser.add_argument("--eager-epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=["fast", "fast_compiled"], type=_variant,
                        help=f"fast-path variants to time ({', '.join(FAST_VARIANTS)}; the first also gives the LWS "
                             "stage 2's stage 1), and stacked<K>: K seeds as one stack vs one run and vs K streams")
    parser.add_argument("--output", default=None, help="results JSON (default benchmarks/results/speed_<gpu>.json)")
    args = parser.parse_args(argv)
    if args.variants[0].startswith("stacked"):
        parser.error("put a fast-path variant first (its stage 1 is the LWS stage 2's), e.g. --variants fast stacked3")
    if not torch.cuda.is_available():
        print("longtail bench speed needs a CUDA GPU (the comparison is about GPU training); "
              "longtail bench speed --cpu compares fp32 and bf16 training steps on the CPU", file=sys.stderr)
        return 2
    data_args = [f"data.prepared={args.prepared}"] if args.prepared else ["data.dataset=cifar10", f"data.root={args.root}"]
    data_args.append(f"seed={args.seed}")
    record: dict = {"command": "longtail bench speed " + " ".join(argv or sys.argv[1:]), "epochs": args.epochs}
    with tempfile.TemporaryDirectory() as tmp:
        fast_cfg = _ce_config(data_args, tmp, args.epochs, [])
        dataset = load_dataset(fast_cfg.data)
        record["dataset"] = {"name": dataset.name, "train": len(dataset.train), "test": len(dataset.test), "meta": dataset.meta}

        conventional = run_conventional(dataset, args.conventional_epochs, total_epochs=args.epochs)
        record["conventional"] = {
            **conventional,
            "measured_epochs": args.conventional_epochs,
            "extrapolated_total_seconds": _extrapolate(conventional["epoch_seconds"], args.epochs),
        }

        eager_cfg = _ce_config(data_args, tmp, args.eager_epochs, ["engine.cuda_graph=off", "engine.amp=off", "engine.channels_last=off", "name=speed_eager"])
        run_config(eager_cfg, fresh=True)
        eager_epochs = _epoch_seconds(Path(tmp) / "speed_eager" / f"seed{args.seed}")
        record["eager_fp32"] = {
            "epoch_seconds": eager_epochs,
            "measured_epochs": args.eager_epochs,
            "extrapolated_total_seconds": _extrapolate(eager_epochs, args.epochs),
        }

        for position, variant in enumerate(args.variants):
            engine = FAST_VARIANTS[variant][1] if variant in FAST_VARIANTS else []
            variant_cfg = _ce_config(data_args, tmp, args.epochs, engine + [f"name=speed_{variant}"])
            try:
                if variant.startswith("stacked"):
                    record[variant] = _measure_stacked(int(variant[7:]), data_args, tmp, args.epochs, args.seed)
                else:
                    record[variant] = _measure_fast(variant_cfg, args.epochs)
            except Exception as error:  # a later variant's failure (e.g. the compiler) keeps the others' timings
                if position == 0:
                    raise
                record[variant] = {"error": f"{type(error).__name__}: {error}"}
                print(f"variant {variant} failed: {record[variant]['error']}", file=sys.stderr)
        stage1 = Path(tmp) / f"speed_{args.variants[0]}" / f"seed{args.seed}" / "stage0_stage1.pt"
        lws_cfg = load_config(
            mapping={"method": "ce", "name": "speed_lws"},
            overrides=data_args
            + [f"output_dir={tmp}", "engine.progress=false", "engine.checkpoint_every=0", f"stages.0.init_from={stage1}"],
        )
        lws_cfg.stages.append(_lws_stage())
        lws = run_config(lws_cfg, fresh=True)
        record["stage2_lws"] = {
            "seconds": lws["timings"][1]["seconds"],
            "epochs": lws_cfg.stages[1].epochs,
            "test_top1": lws["test"]["top1"],
            "cuda_graph": lws["timings"][1]["cuda_graph"],
        }
    for variant in FAST_VARIANTS:
        if variant in record and "error" not in record[variant]:
            seconds = record[variant]["stage1_seconds_excluding_capture"]
            record[variant]["speedup_vs_conventional"] = record["conventional"]["extrapolated_total_seconds"] / seconds
            record[variant]["speedup_vs_eager_fp32"] = record["eager_fp32"]["extrapolated_total_seconds"] / seconds
    record["env"] = environment(Runtime.resolve(fast_cfg.engine), record["command"])
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    output = Path(args.output or f"benchmarks/results/speed_{gpu}.json")
    write_json(output, record)
    print(_table(record))
    print(f"wrote {output}")
    return 0


def _measure_fast(config, epochs: int) -> dict:
    """Train ``config`` whole on the fast path; one-off capture/compilation is timed apart."""
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run_config(config, fresh=True)
    wall = time.perf_counter() - start
    stage = result["timings"][0]
    train_seconds = stage["seconds"] - stage["compile_seconds"]
    images = epochs * stage["steps_per_epoch"] * stage["batch_size"]
    return {
        "stage1_seconds_excluding_capture": train_seconds,
        "capture_seconds": stage["compile_seconds"],
        "cuda_graph": stage["cuda_graph"],
        "fallback_reason": stage["fallback_reason"],
        "wall_seconds_including_data_and_eval": wall,
        "images_per_second": images / train_seconds,
        "test_top1": result["test"]["top1"],
        "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
        "runtime": Runtime.resolve(config.engine).describe(),
    }


def _measure_stacked(k: int, data_args: list[str], out: str, epochs: int, seed: int) -> dict:
    """K seeds (``seed`` ... ``seed + K - 1``) of the fast path: one run alone, the K runs at once on K
    CUDA streams (threads, as ``bench reproduce --concurrent K``), and the K runs as one stack."""
    from concurrent.futures import ThreadPoolExecutor

    from ..engine.stacked import run_stacked
    from .reproduce import _run

    data = [a for a in data_args if not a.startswith("seed=")]
    configs = lambda tag: [_ce_config(data + [f"seed={s}"], out, epochs, [f"name=speed_stacked{k}_{tag}"])  # noqa: E731
                           for s in range(seed, seed + k)]
    single = _measure_fast(configs("single")[0], epochs)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=k) as pool:
        streams = list(pool.map(lambda c: _run(c, "longtail bench speed"), configs("streams")))
    streams_wall = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    stacked = run_stacked(configs("stacked"), command="longtail bench speed", fresh=True)
    stacked_wall = time.perf_counter() - start
    stage = stacked[0]["timings"][0]
    seconds = stage["seconds"] - stage["compile_seconds"]
    return {
        "k": k,
        "single_stage1_seconds_excluding_capture": single["stage1_seconds_excluding_capture"],
        "single_wall_seconds_including_data_and_eval": single["wall_seconds_including_data_and_eval"],
        "streams_wall_seconds_including_data_and_eval": streams_wall,
        "streams_stage1_seconds": [r["timings"][0]["seconds"] for r in streams],
        "stacked_stage1_seconds_excluding_capture": seconds,
        "stacked_capture_seconds": stage["compile_seconds"],
        "stacked_wall_seconds_including_data_and_eval": stacked_wall,
        "cuda_graph": stage["cuda_graph"],
        "fallback_reason": stage["fallback_reason"],
        "stacked_vs_single_models_per_second": k * single["stage1_seconds_excluding_capture"] / seconds,
        "stacked_vs_streams_wall": streams_wall / stacked_wall,
        "images_per_second": k * epochs * stage["steps_per_epoch"] * stage["batch_size"] / seconds,
        "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
        "test_top1": {"single": single["test_top1"], "streams": [r["test"]["top1"] for r in streams],
                      "stacked": [r["test"]["top1"] for r in stacked]},
    }


def _lws_stage():
    from ..config import OptimizerConfig, ScheduleConfig, StageConfig

    return StageConfig(
        name="lws", epochs=10, batch_size=512, train="head", head="lws", features="cached",
        sampler={"name": "class_balanced"}, loss={"name": "ce"}, augment="none",
        optimizer=OptimizerConfig(lr=0.2, weight_decay=5e-4), schedule=ScheduleConfig(name="cosine"),
    )


def _epoch_seconds(run_dir: Path) -> list[float]:
    import json

    return [json.loads(line)["seconds"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _table(record: dict) -> str:
    e = record["epochs"]
    rows = [
        ("conventional (DataLoader+PIL, fp32)", record["conventional"]["extrapolated_total_seconds"], f"extrapolated from {record['conventional']['measured_epochs']} epochs"),
        ("longtail eager fp32 (device data)", record["eager_fp32"]["extrapolated_total_seconds"], f"extrapolated from {record['eager_fp32']['measured_epochs']} epochs"),
    ]
    for variant, (name, _) in FAST_VARIANTS.items():
        if variant in record and "error" not in record[variant]:
            fast = record[variant]
            rows.append((name, fast["stage1_seconds_excluding_capture"], f"measured, {e} epochs; capture/compile {fast['capture_seconds']:.1f} s"))
    lines = [f"{'pipeline':38s} {'s/epoch':>8s} {f'{e} ep (s)':>10s}  note"]
    for name, total, note in rows:
        lines.append(f"{name:38s} {total / e:8.3f} {total:10.1f}  {note}")
    for variant in FAST_VARIANTS:
        if variant in record and "error" in record[variant]:
            lines.append(f"{variant}: failed, {record[variant]['error']}")
        elif variant in record:
            fast = record[variant]
            lines.append(
                f"{variant}: {fast['speedup_vs_conventional']:.1f}x vs conventional, {fast['speedup_vs_eager_fp32']:.1f}x vs eager fp32; "
                f"{fast['images_per_second']:.0f} images/s, peak GPU memory {fast['peak_gpu_memory_mib']:.0f} MiB, test top-1 {fast['test_top1']:.2f}"
            )
    for variant, stacked in record.items():
        if not variant.startswith("stacked") or not isinstance(stacked, dict):
            continue
        if "error" in stacked:
            lines.append(f"{variant}: failed, {stacked['error']}")
            continue
        lines.append(
            f"{variant}: {stacked['k']} runs stacked {stacked['stacked_stage1_seconds_excluding_capture']:.1f} s "
            f"(one run alone {stacked['single_stage1_seconds_excluding_capture']:.1f} s: "
            f"{stacked['stacked_vs_single_models_per_second']:.2f}x the models per second); wall with data and eval "
            f"{stacked['stacked_wall_seconds_including_data_and_eval']:.1f} s vs {stacked['k']} streams "
            f"{stacked['streams_wall_seconds_including_data_and_eval']:.1f} s ({stacked['stacked_vs_streams_wall']:.2f}x)"
        )
    lines.append(f"stage 2 LWS ({record['stage2_lws']['epochs']} epochs, cached features): {record['stage2_lws']['seconds']:.2f} s")
    return "\n".join(lines)
