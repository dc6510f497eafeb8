"""``longtail bench speed --cpu``: CPU training-step throughput, fp32 against bf16 autocast.

Times the training step (forward, loss, backward, SGD step) of CIFAR ResNets on CPU batches in
each numeric variant, interleaved round by round in one process so that other load on the machine
falls on every variant alike; reports the median images per second over the rounds, each
variant's ratio to fp32, the threads and the CPU's bf16 support. Batches are random images (the
step's cost does not depend on the pixels). ``--stack K`` adds ``stacked<K>``: K members as one
grouped-convolution network (models/stacked.py) in bf16, its images per second counting all K
members' images, against the bf16 row (one member at a time).
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ..engine.device import cpu_has_bf16
from ..engine.runner import git_commit
from ..eval.report import write_json
from ..models import build_model
from ..models.stacked import stack_encoders

# variant -> (bf16 autocast, channels_last)
VARIANTS = {"fp32": (False, False), "fp32_channels_last": (False, True),
            "bf16": (True, False), "bf16_channels_last": (True, True)}


def _step_seconds(model, optimizer, images, labels, bf16: bool, steps: int) -> float:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    for _ in range(steps):
        with autocast:
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


class _Stacked(torch.nn.Module):
    """K members as one network: ``[B, K*3, H, W]`` -> logits ``[K*B, classes]`` (one linear head
    per member, applied with one batched matmul)."""

    def __init__(self, encoder: str, k: int):
        super().__init__()
        members = [build_model(encoder, num_classes=10) for _ in range(k)]
        self.encoder = stack_encoders([m.encoder for m in members])
        self.weight = torch.nn.Parameter(torch.stack([m.head.fc.weight.detach() for m in members]))
        self.bias = torch.nn.Parameter(torch.stack([m.head.fc.bias.detach() for m in members]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)  # [K, B, D]
        return (torch.baddbmm(self.bias[:, None], features, self.weight.transpose(1, 2))).flatten(0, 1)


def _setup(encoder: str, batch: int, bf16: bool, channels_last: bool, k: int = 1):
    model = (build_model(encoder, num_classes=10) if k == 1 else _Stacked(encoder, k)).train()
    images = torch.rand(batch, 3 * k, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    return model, optimizer, images, torch.randint(0, 10, (batch * k,)), bf16


def measure(encoder: str, batch: int, steps: int, rounds: int, variants: list[str], stack: int = 0,
            seed: int = 0) -> dict:
    """Median images/s of each variant over ``rounds`` interleaved rounds of ``steps`` steps."""
    torch.manual_seed(seed)
    setups, images_per_step = {}, {}
    for name in variants:
        setups[name], images_per_step[name] = _setup(encoder, batch, *VARIANTS[name]), batch
    if stack > 1:
        name = f"stacked{stack}"
        setups[name], images_per_step[name] = _setup(encoder, batch, True, False, k=stack), batch * stack
    for name in setups:
        _step_seconds(*setups[name], steps=2)  # warm-up: allocator, oneDNN primitives
    per_round = {name: [] for name in setups}
    for _ in range(rounds):
        for name in setups:
            per_round[name].append(images_per_step[name] * steps / _step_seconds(*setups[name], steps=steps))
    median = {name: statistics.median(values) for name, values in per_round.items()}
    return {name: {"images_per_second": median[name], "rounds": per_round[name],
                   "ratio_to_fp32": median[name] / median["fp32"] if "fp32" in median else None,
                   "ratio_to_bf16": median[name] / median["bf16"] if "bf16" in median else None}
            for name in setups}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longtail bench speed --cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet8", "resnet32"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="training steps per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stack", type=int, default=0, metavar="K", help="also time K members as one stack (bf16)")
    parser.add_argument("--output", default="benchmarks/results/speed_cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = {
        "command": "longtail bench speed --cpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(),
        "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} torch threads)",
        "cpu_bf16": cpu_has_bf16(),
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        "models": {},
    }
    if not cpu_has_bf16():
        print("this CPU has no native bf16: engine.amp=bf16 trains in fp32 here; timing the bf16 variants anyway")
    for encoder in args.models:
        record["models"][encoder] = measure(encoder, args.batch_size, args.steps, args.rounds, args.variants, args.stack)
        for name, row in record["models"][encoder].items():
            ratios = "  ".join(f"x{row[f'ratio_to_{r}']:.2f} {r}" for r in ("fp32", "bf16") if row[f"ratio_to_{r}"])
            print(f"{encoder:10s} {name:20s} {row['images_per_second']:8.0f} img/s  {ratios}")
    write_json(args.output, record)
    print(f"wrote {args.output}")
    return 0
