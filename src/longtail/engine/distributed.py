"""Data-parallel training over several processes (``torchrun --nproc_per_node N -m longtail.cli train ...``).

Every rank holds the whole model, draws the same epoch indices (same seed, same random streams)
and trains on its own contiguous slice of each global batch (``batch_size / world_size`` samples).
Each stage's step runs through :class:`torch.nn.parallel.DistributedDataParallel` over the
stage's trained parameters (:func:`data_parallel`): gradients are averaged over the ranks in
DDP's bucketed all-reduce during ``backward``, so every rank takes the same optimiser step as one
process with the whole batch would (exactly so for losses that average over the batch and models
without BatchNorm). BatchNorm statistics: rank 0's are broadcast before each forward (DDP's
``broadcast_buffers``) and at the end of each epoch, so that every rank evaluates the same model;
with ``engine.sync_batchnorm: true`` (CUDA only: torch's SyncBatchNorm refuses CPU tensors) the
BatchNorm layers are converted to :class:`torch.nn.SyncBatchNorm` and normalise with the whole
global batch's statistics. Distributed steps run eagerly (collectives are not captured in the
CUDA graph). ``results.json`` records the path (``distributed``: world size and ``single``,
``ddp`` or ``ddp+syncbn``). Rank 0 alone writes the run folder (the unwrapped model's
state dict: no ``module.`` prefix); every rank evaluates. GHM-CWAP sums its per-epoch
histograms over the ranks; Seesaw's cumulative counts see only their rank's slice (its
mitigation uses count ratios, which the slices share in expectation).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks (a single process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch_size: int) -> int:
        """The per-rank share of a global batch; the batch must split evenly."""
        if batch_size % self.size:
            raise ConfigError(
                f"batch_size {batch_size} does not split over {self.size} processes: use a multiple of {self.size}"
            )
        return batch_size // self.size


def init_world(backend: str) -> World:
    """The world described by torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``),
    with the process group started on ``backend`` (nccl on CUDA, gloo on the CPU) when it has
    more than one rank."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=world.rank, world_size=size)
    return world


class _LossStep(nn.Module):
    """A stage's loss as a module holding its trained parameters (and the trained modules, for
    their buffers), so that DDP sees the forward and reduces exactly those gradients."""

    def __init__(self, compute_loss: Callable, params: list[nn.Parameter], modules: list[nn.Module]):
        super().__init__()
        self.params = nn.ParameterList(params)  # the same Parameter objects, not copies
        self.modules_ = nn.ModuleList(modules)
        self.compute_loss = compute_loss

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        return self.compute_loss(x, y)


def data_parallel(compute_loss: Callable, params: list[nn.Parameter], modules: list[nn.Module], device: torch.device,
                  static: bool = True):
    """``compute_loss(x, y) -> (loss, logits)`` run through DistributedDataParallel over ``params``.

    ``static``: the step is the same graph every time (a CUDA-graph-safe stage), so DDP finds the
    parameters it leaves unused once (``static_graph``); otherwise it looks in every step
    (``find_unused_parameters``). Unused parameters keep no gradient, as in one process."""
    step = _LossStep(compute_loss, params, modules)
    return DistributedDataParallel(
        step, device_ids=[device.index] if device.type == "cuda" else None,
        static_graph=static, find_unused_parameters=not static,
    )


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with its BatchNorm layers as :class:`torch.nn.SyncBatchNorm` (same parameters,
    buffers and state-dict keys)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def parallel_path(world: World, sync_bn: bool) -> dict:
    """What ``results.json`` records of the data parallelism a run used."""
    path = "single" if world.size == 1 else ("ddp+syncbn" if sync_bn else "ddp")
    return {"world_size": world.size, "path": path}


def sum_(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place."""
    if world.size > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast_buffers_(modules, world: World) -> None:
    """Copy rank 0's floating-point buffers (BatchNorm statistics) to every rank."""
    if world.size == 1:
        return
    for module in modules:
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.broadcast(buffer, 0)
