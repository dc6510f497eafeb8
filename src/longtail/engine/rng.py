"""A run's own random streams, made from its seed (``RunContext.rng``).

Every training-time draw takes one of these generators explicitly (epoch indices, augmentation,
mixing, GLAG / LADC feature generation, losses that draw), so runs in one process (stacked
members, ``bench reproduce --concurrent``) never share or swap a stream, and a run leaves
torch's and numpy's global generators as it found them.

- ``torch``: a ``torch.Generator`` on the run's device, for everything drawn on the device; on
  CUDA it is registered with the step's CUDA graph (``Trainer._capture``).
- ``cpu``: a CPU ``torch.Generator`` (the same object as ``torch`` on a CPU run), for host-side
  draws (the sampler of streamed images, DataLoader worker seeds) and weight-initialisation seeds.
- ``numpy``: a ``numpy.random.Generator`` (PCG64) for host-side numpy draws.

Weight initialisation (``nn.init``) takes no generator and draws from torch's global CPU
generator (modules are built on the CPU, then moved): :meth:`RunRNG.initialising` seeds it from
the run's CPU stream, under :data:`~longtail.engine.concurrency.DEVICE_RNG_LOCK`, and restores it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch

from .concurrency import DEVICE_RNG_LOCK


class RunRNG:
    """The generators of one run, all seeded with ``seed``; ``state_dict`` for checkpoints."""

    def __init__(self, seed: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.torch = torch.Generator(self.device).manual_seed(seed)
        self.cpu = self.torch if self.device.type == "cpu" else torch.Generator().manual_seed(seed)
        self.numpy = np.random.default_rng(seed)

    def graph_generators(self) -> list[torch.Generator]:
        """The CUDA generators a captured step may draw from (to register with its graph)."""
        return [self.torch] if self.device.type == "cuda" else []

    @contextlib.contextmanager
    def initialising(self) -> Iterator[None]:
        """Weight initialisation drawn from the run's stream: torch's global CPU generator seeded
        with a seed drawn from ``cpu``, restored on exit (under the lock: one run at a time)."""
        seed = int(torch.randint(2**62, (), generator=self.cpu))
        with DEVICE_RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": self.torch.get_state(), "numpy": self.numpy.bit_generator.state}
        if self.cpu is not self.torch:
            state["cpu"] = self.cpu.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.torch.set_state(state["torch"].cpu())
        if "cpu" in state and self.cpu is not self.torch:
            self.cpu.set_state(state["cpu"].cpu())
        self.numpy.bit_generator.state = state["numpy"]

    def load_global_state(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint of the code before per-run generators, which kept the global
        states (its ``rng`` entry): the device stream continues the global stream of the run's device
        (its CUDA generator; on a CPU run the global CPU one), so the rest of the interrupted stage
        draws what that code would have drawn; ``cpu`` continues the global CPU stream (on CUDA
        runs). Not exact: weight initialisation of later stages (the old code drew it from the
        global stream, this code seeds it from ``cpu``), and numpy (a legacy MT19937 state has no
        PCG64 counterpart; the numpy stream is left as seeded)."""
        self.cpu.set_state(state["torch"].cpu())
        cuda = state.get("cuda")
        if self.device.type == "cuda" and cuda:
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.torch.set_state(cuda[index].cpu())
