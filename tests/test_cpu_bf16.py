"""engine.amp on the CPU (issue 26): bf16 autocast where the CPU computes bf16 natively, fp32 elsewhere."""
from __future__ import annotations

import torch

from longtail.config import EngineConfig
from longtail.engine import device
from longtail.engine.device import Runtime


def test_cpu_bf16_follows_the_cpu_capability(monkeypatch):
    for supported in (True, False):
        monkeypatch.setattr(device, "cpu_has_bf16", lambda: supported)
        assert Runtime.resolve(EngineConfig(device="cpu", amp="bf16")).bf16 is supported
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert Runtime.resolve(EngineConfig(device="cpu")).bf16 is False  # auto stays fp32 on the CPU
    assert Runtime.resolve(EngineConfig(device="cpu", amp="off")).bf16 is False


def test_cpu_autocast_runs_the_network_in_bf16_and_keeps_fp32_weights(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    runtime = Runtime.resolve(EngineConfig(device="cpu", amp="bf16"))
    layer = torch.nn.Linear(4, 3)
    with runtime.autocast():
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32


def test_bench_speed_cpu_times_the_variants_side_by_side(tmp_path):
    import json

    from longtail.bench.speed import main

    out = tmp_path / "speed_cpu.json"
    assert main(["--cpu", "--models", "resnet8", "--variants", "fp32", "bf16", "--steps", "1", "--rounds", "2",
                 "--batch-size", "8", "--stack", "2", "--output", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = record["models"]["resnet8"]
    assert set(rows) == {"fp32", "bf16", "stacked2"} and rows["fp32"]["ratio_to_fp32"] == 1.0
    assert rows["bf16"]["ratio_to_bf16"] == 1.0
    assert all(len(row["rounds"]) == 2 and row["images_per_second"] > 0 for row in rows.values())
    assert record["commit"] and "cpu" in record["device"]
