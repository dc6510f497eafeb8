"""GPU probe: is training K seeds as one grouped ("stacked") network faster than K runs?

A ResNet-32 step at batch 128 keeps an H100 busy with many small kernels; three runs on three
CUDA streams overlapped only ~1.2x (benchmarks/README.md). Stacking K independent models into one
network whose convolutions have ``groups=K`` (input: the K batches side by side along channels; a
block-diagonal classifier) trains exactly K independent models with K-times-wider kernels. This
probe times, on synthetic CIFAR-shaped data with the fast path's settings (bf16 autocast,
channels_last, fused SGD, the step captured in a CUDA graph):

- ``single``: one model, one step;
- ``streams``: K models, one step each on K streams, replayed together;
- ``stacked``: one grouped model holding K models.

Usage (on a GPU): ``python benchmarks/probe_stacked.py [--k 3] [--steps 300] [--output probe.json]``.
The model here uses 1x1-convolution shortcuts (option B) for simplicity; only the timing ratios
matter. Nothing here is used by the library: it decides whether stacking is worth building.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, k: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin * k, cout * k, 3, stride, 1, groups=k, bias=False)
        self.bn1 = nn.BatchNorm2d(cout * k)
        self.conv2 = nn.Conv2d(cout * k, cout * k, 3, 1, 1, groups=k, bias=False)
        self.bn2 = nn.BatchNorm2d(cout * k)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin * k, cout * k, 1, stride, groups=k, bias=False), nn.BatchNorm2d(cout * k))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class StackedResNet32(nn.Module):
    """K independent CIFAR ResNet-32s as one network: [B, 3K, H, W] -> [K, B, classes]."""

    def __init__(self, k: int = 1, classes: int = 10):
        super().__init__()
        self.k = k
        self.stem = nn.Sequential(nn.Conv2d(3 * k, 16 * k, 3, 1, 1, groups=k, bias=False), nn.BatchNorm2d(16 * k), nn.ReLU())
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(5):
                layers.append(Block(cin, cout, stride if i == 0 else 1, k))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Parameter(torch.randn(k, 64, classes) * 0.05)  # block-diagonal classifier

    def forward(self, x):
        feats = F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)  # [B, 64K]
        feats = feats.view(feats.shape[0], self.k, 64).transpose(0, 1)  # [K, B, 64]
        return torch.bmm(feats, self.head)  # [K, B, classes]


def make_step(model, x, y, opt):
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            logits = model(x)
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        loss = losses.view(y.shape).mean(1).sum()  # the sum of each model's own mean loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    return step


def capture(step, stream):
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        step()
    return graph


def setup(k, batch):
    model = StackedResNet32(k).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3 * k, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (k, batch), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.1, device="cuda"), momentum=0.9, fused=True)
    return make_step(model, x, y, opt)


def timed(fn, steps):
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    k, steps = args.k, args.steps
    single = capture(setup(1, args.batch), torch.cuda.Stream())
    streams = [torch.cuda.Stream() for _ in range(k)]
    graphs = [capture(setup(1, args.batch), s) for s in streams]

    def replay_streams():
        for g, s in zip(graphs, streams):
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                g.replay()
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)

    stacked = capture(setup(k, args.batch), torch.cuda.Stream())
    ms = {"single": timed(single.replay, steps), f"{k}_streams": timed(replay_streams, steps), f"stacked_{k}": timed(stacked.replay, steps)}
    record = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "k": k, "batch": args.batch, "steps": steps,
        "ms_per_step": ms,
        "models_per_second_vs_single": {name: (1 if name == "single" else k) * ms["single"] / value for name, value in ms.items()},
    }
    print(json.dumps(record, indent=1))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(record, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
