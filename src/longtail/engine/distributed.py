"""Data-parallel training over several processes (``torchrun --nproc_per_node N -m longtail.cli train ...``).

Every rank holds the whole model, draws the same epoch indices (same seed, same random streams)
and trains on its own contiguous slice of each global batch (``batch_size / world_size`` samples);
after ``backward`` the gradients are averaged over the ranks in one flat all-reduce, so every rank
takes the same optimiser step as one process with the whole batch would (exactly so for losses
that average over the batch and models without BatchNorm). BatchNorm statistics are per rank
during an epoch and rank 0's are broadcast at its end (as DDP's ``broadcast_buffers``). Rank 0
alone writes the run folder; every rank evaluates. Distributed steps run eagerly (collectives are
not captured in the CUDA graph). GHM-CWAP sums its per-epoch histograms over the ranks; Seesaw's
cumulative counts see only their rank's slice (its mitigation uses count ratios, which the
slices share in expectation).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

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


def average_(tensors: list[torch.Tensor], world: World) -> None:
    """Replace each tensor by its mean over the ranks (one flat all-reduce)."""
    if world.size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


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
