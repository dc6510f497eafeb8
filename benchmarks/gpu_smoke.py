"""GPU smoke test on synthetic CIFAR-shaped data (no dataset file needed).

Checks that every packaged recipe runs on the fast path (or says why not), and times the CE
stage 1 per epoch, sequentially and with several runs trained concurrently (one CUDA stream
each). Usage: PYTHONPATH=src python benchmarks/gpu_smoke.py OUT_DIR [comma-separated recipes]
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

import longtail.engine.runner as runner
from longtail.config import load_config, method_names
from longtail.data.dataset import ArraySplit, LongTailedDataset
from longtail.data.profiles import exponential_profile


def synthetic(_config=None) -> LongTailedDataset:
    rng = np.random.default_rng(0)
    counts = exponential_profile(5000, 10, 100)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    x = rng.integers(0, 256, (len(y), 3, 32, 32), dtype=np.uint8)
    yt = np.repeat(np.arange(10), 1000)
    xt = rng.integers(0, 256, (len(yt), 3, 32, 32), dtype=np.uint8)
    yv = np.repeat(np.arange(10), 20)  # a balanced validation split, as GLAG's feature generator needs
    xv = rng.integers(0, 256, (len(yv), 3, 32, 32), dtype=np.uint8)
    return LongTailedDataset("synthetic-cifar10-lt", 10, [str(i) for i in range(10)], ArraySplit(x, y), ArraySplit(xt, yt),
                             val=ArraySplit(xv, yv), mean=(0.49, 0.48, 0.45), std=(0.2, 0.2, 0.2))


def cfg(out: Path, method: str, epochs: int, seed: int = 0, name: str | None = None):
    overrides = [f"output_dir={out}", "engine.progress=false", f"stages.0.epochs={epochs}", "stages.0.schedule.milestones=[]",
                 "stages.0.schedule.warmup_epochs=1", "engine.checkpoint_every=0", f"seed={seed}"]
    return load_config(mapping={"method": method, "name": name or method}, overrides=overrides)


def main(out: Path) -> None:
    runner.load_dataset = synthetic
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "recipes": {}}
    methods = [m for m in method_names() if m != "digits_default"]
    if len(sys.argv) > 2:
        methods = sys.argv[2].split(",")
    for method in methods:
        start = time.perf_counter()
        try:
            res = runner.run_config(cfg(out / "recipes", method, 3), fresh=True)
            report["recipes"][method] = {
                "ok": True, "seconds": time.perf_counter() - start,
                "stages": [{k: t.get(k) for k in ("stage", "seconds", "compile_seconds", "cuda_graph", "fallback_reason")} for t in res["timings"]],
            }
        except Exception as exc:  # noqa: BLE001 - the smoke test reports every failure
            report["recipes"][method] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(method, json.dumps(report["recipes"][method])[:300], flush=True)

    epochs = 10
    start = time.perf_counter()
    for seed in range(3):
        runner.run_config(cfg(out / "seq", "ce", epochs, seed), fresh=True)
    sequential = time.perf_counter() - start

    def one(seed):
        with torch.cuda.stream(torch.cuda.Stream()):
            return runner.run_config(cfg(out / "conc", "ce", epochs, seed), fresh=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, range(3)))
    concurrent = time.perf_counter() - start
    report["ce_10_epochs_x3"] = {"sequential_s": sequential, "concurrent_3_streams_s": concurrent,
                                  "concurrent_top1": [r["test"]["top1"] for r in results],
                                  "stage_seconds": [r["timings"][0]["seconds"] for r in results]}
    print(json.dumps(report["ce_10_epochs_x3"]), flush=True)
    (out / "smoke.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
