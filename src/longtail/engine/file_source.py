"""Batches of file-backed splits (:class:`~longtail.data.files.FileSplit`) from DataLoaders.

:class:`LoaderSource` serves training batches (the stage's sampling strategy through a
:class:`~longtail.data.sampling.StrategySampler`, torchvision augmentation in the workers);
:func:`eval_batches` serves evaluation / feature-extraction batches in order. Both hand back
normalised float batches on the device. Host-side loading cannot be captured in a CUDA graph,
so stages fed by a LoaderSource run eagerly.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from ..data.files import FileSplit, eval_transform, train_transform
from ..data.sampling import SamplingStrategy, StrategySampler
from .device import Runtime
from .distributed import World
from .sources import steps_per_epoch


class RankSlices(torch.utils.data.Sampler[int]):
    """This rank's contiguous slice of every global batch that ``sampler`` yields."""

    def __init__(self, sampler: StrategySampler, batch_size: int, world: World):
        self.sampler, self.batch_size, self.world = sampler, batch_size, world
        self.local = world.shard(batch_size)

    def __iter__(self) -> Iterator[int]:
        indices = list(self.sampler)
        start = self.world.rank * self.local
        for batch in range(0, len(indices) - self.batch_size + 1, self.batch_size):
            yield from indices[batch + start : batch + start + self.local]

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size * self.local


def _to_device(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    x = x.to(runtime.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x


class LoaderSource:
    """A training split read from disk, as fixed-size batches (``steps_per_epoch`` full batches);
    ``generator`` (a CPU one, the run's) draws the epoch's indices and the workers' seeds."""

    graph_unsafe_reason = "images are streamed from disk by a DataLoader"

    def __init__(
        self,
        split: FileSplit,
        strategy: SamplingStrategy,
        batch_size: int,
        total_epochs: int,
        runtime: Runtime,
        augment: str = "crop_flip",
        mean=None,
        std=None,
        generator: torch.Generator | None = None,
    ):
        self.runtime = runtime
        self.batch_size = min(batch_size, len(split))
        self.steps_per_epoch = steps_per_epoch(len(split), self.batch_size)
        self.sampler = StrategySampler(split.y, strategy, num_samples=self.steps_per_epoch * self.batch_size,
                                       generator=generator)
        self.sampler.set_epoch(0, total_epochs)
        world = runtime.world
        self.loader = DataLoader(
            split.with_transform(train_transform(split.image_size, mean, std, augment)),
            batch_size=world.shard(self.batch_size),
            sampler=self.sampler if world.size == 1 else RankSlices(self.sampler, self.batch_size, world),
            num_workers=split.workers,
            pin_memory=runtime.device.type == "cuda",
            persistent_workers=split.workers > 0,
            drop_last=True,
            generator=generator,
        )
        self.batches: Iterator | None = None

    def start_epoch(self, epoch: int) -> None:
        """Draw this epoch's indices (in the sampler) and start reading its batches."""
        self.sampler.set_epoch(epoch)
        self.batches = iter(self.loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch ``(inputs, labels)`` on the device (not graph-safe: it waits for the loader)."""
        x, y = next(self.batches)
        return _to_device(x, self.runtime), y.to(self.runtime.device, non_blocking=True)


def eval_batches(split: FileSplit, batch_size: int, runtime: Runtime, mean=None, std=None) -> Iterator[torch.Tensor]:
    """The split's images in order, evaluation-transformed, as float batches on the device."""
    loader = DataLoader(
        split.with_transform(eval_transform(split.image_size, mean, std)),
        batch_size=batch_size,
        num_workers=split.workers,
        pin_memory=runtime.device.type == "cuda",
    )
    for x, _ in loader:
        yield _to_device(x, runtime)
