"""Where training batches come from.

:class:`DeviceSource` keeps the whole training split on the device (uint8 images or float
features). Once per epoch it draws the epoch's sample indices on the device; each step then
gathers its batch by index, augments it per sample and normalises it, all without a host
synchronisation, so the step can be captured in a CUDA graph. The indices are drawn from
``generator`` (the run's device generator); the augmentation draws from the generator it was
built with.

Every epoch has a fixed number of full batches, ``ceil(N / batch_size)``: instance sampling
is a permutation of the data extended by the head of a second permutation to fill the last
batch (so shapes stay fixed and every image is seen at least once per epoch).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..data.gpu_augment import Normalize
from ..data.sampling import DeviceIndexDrawer, SamplingStrategy
from .distributed import World

Augment = Callable[[torch.Tensor], torch.Tensor]


def steps_per_epoch(items: int, batch_size: int) -> int:
    """Batches in an epoch of ``items``: ``ceil(items / batch)``, the batch capped at ``items``."""
    return -(-items // min(batch_size, items))


def epochs_for_iterations(iterations: int, steps: int) -> int:
    """Epochs an iteration-based stage (``stages.N.iterations``) lasts at ``steps`` steps per epoch:
    whole epochs, the last one cut short."""
    return -(-iterations // steps)


class DeviceSource:
    """A training split resident on the device, served as fixed-shape batches."""

    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        strategy: SamplingStrategy,
        batch_size: int,
        total_epochs: int,
        augment: Augment | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        channels_last: bool = False,
        world: World = World(),
        generator: torch.Generator | None = None,
    ):
        self.inputs = inputs
        self.generator = generator
        self.labels = labels
        self.batch_size = min(batch_size, len(labels))  # the global batch; this rank trains on its slice
        self.world = world
        self.local_batch = world.shard(self.batch_size)
        self.steps_per_epoch = steps_per_epoch(len(labels), self.batch_size)
        self.augment = augment
        self.is_image = inputs.dtype == torch.uint8
        self.normalize = Normalize(mean, std).to(labels.device) if self.is_image else None
        self.channels_last = channels_last and inputs.dim() == 4
        self.drawer = DeviceIndexDrawer(labels, num_classes, strategy, total_epochs)
        device = labels.device
        self.epoch_indices = torch.zeros(self.steps_per_epoch, self.batch_size, dtype=torch.long, device=device)
        self.cursor = torch.zeros(1, dtype=torch.long, device=device)

    def start_epoch(self, epoch: int) -> None:
        """Draw this epoch's indices (on the device) and rewind the step cursor."""
        drawn = self.drawer.draw(self.steps_per_epoch * self.batch_size, epoch, self.generator)
        self.epoch_indices.copy_(drawn.view(self.steps_per_epoch, self.batch_size))
        self.cursor.zero_()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch ``(inputs, labels)``; graph-safe (the cursor advances on the device)."""
        index = self.epoch_indices.index_select(0, self.cursor).view(-1)
        if self.world.size > 1:  # this rank's contiguous slice of the global batch
            index = index.narrow(0, self.world.rank * self.local_batch, self.local_batch)
        self.cursor.add_(1)
        x = self.inputs.index_select(0, index)
        y = self.labels.index_select(0, index)
        return self.prepare(x), y

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Augment (images only, per sample), convert to float and normalise."""
        if not self.is_image:
            return x
        if self.augment is not None:
            x = self.augment(x)
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
