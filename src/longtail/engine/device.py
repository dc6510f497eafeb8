"""Resolve the engine settings (device, bf16 autocast, channels_last, CUDA graphs, torch.compile,
cuDNN autotuning) for a machine."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..config import EngineConfig
from ..errors import ConfigError
from .distributed import World, init_world


def _auto(value: str | bool, default: bool, where: str) -> bool:
    """``auto`` -> the machine's default; on/off (YAML also reads them as true/false)."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return default
    if value in ("on", "bf16", "true"):
        return True
    if value in ("off", "false"):
        return False
    raise ConfigError(f"engine.{where} must be auto, on or off, got {value!r}")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX): there ``engine.amp=bf16``
    runs the forward and backward under bf16 autocast (measured against fp32 by ``longtail bench speed
    --cpu``, benchmarks/results/speed_cpu.json); elsewhere autocast would emulate bf16 and be slower,
    so such a CPU trains in fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@dataclass(frozen=True)
class Runtime:
    """What the engine will actually do on this machine."""

    device: torch.device
    bf16: bool
    channels_last: bool
    cuda_graph: bool
    compile: bool = False
    cudnn_benchmark: bool = False
    world: World = World()  # data-parallel ranks (engine/distributed.py); one process by default
    sync_batchnorm: bool = False  # BatchNorm as SyncBatchNorm over the ranks (engine.sync_batchnorm, world > 1)

    @classmethod
    def resolve(cls, config: EngineConfig) -> "Runtime":
        name = config.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("engine.device asks for CUDA but no GPU is visible; use engine.device=cpu")
        on_cuda = device.type == "cuda"
        world = init_world("nccl" if on_cuda else "gloo")
        if on_cuda and world.size > 1:  # one GPU per rank
            device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(device)
        sync_bn = bool(config.sync_batchnorm) and world.size > 1
        if sync_bn and not on_cuda:
            raise ConfigError(
                "engine.sync_batchnorm needs CUDA (torch's SyncBatchNorm refuses CPU tensors): run on GPUs "
                "(engine.device=cuda) or set engine.sync_batchnorm=false"
            )
        if config.cpu_threads > 0:
            torch.set_num_threads(config.cpu_threads)
        bf16 = _auto(config.amp, on_cuda, "amp") and (on_cuda or cpu_has_bf16())
        cudnn_benchmark = _auto(config.cudnn_benchmark, on_cuda, "cudnn_benchmark") and on_cuda
        if on_cuda:
            # Shapes are fixed, so the per-shape autotuning is paid once, in the warm-up steps
            # before CUDA-graph capture. Process-wide: the last resolved run's setting holds.
            torch.backends.cudnn.benchmark = cudnn_benchmark
        return cls(
            device=device,
            bf16=bf16,
            channels_last=_auto(config.channels_last, on_cuda, "channels_last"),
            cuda_graph=_auto(config.cuda_graph, on_cuda, "cuda_graph") and on_cuda,
            compile=_auto(config.compile, on_cuda, "compile"),
            cudnn_benchmark=cudnn_benchmark,
            world=world,
            sync_batchnorm=sync_bn,
        )

    def compiled(self, module: nn.Module) -> nn.Module:
        """``module`` under ``torch.compile`` (Inductor, static shapes) when ``engine.compile`` is on.

        Inside the fast path the compiled kernels are then captured in the step's CUDA graph: the
        warm-up steps before capture pay the one-off compilation, reported as the stage's
        ``compile_seconds``, never as training time. The returned wrapper shares ``module``'s
        parameters; checkpoints and evaluation use the plain module.
        """
        return torch.compile(module, dynamic=False) if self.compile else module

    def autocast(self):
        """bf16 autocast (cache disabled, as CUDA-graph capture requires) or a no-op."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def describe(self) -> dict:
        info = {
            "device": str(self.device),
            "bf16": self.bf16,
            "channels_last": self.channels_last,
            "cuda_graph": self.cuda_graph,
            "compile": self.compile,
            "cudnn_benchmark": self.cudnn_benchmark,
            "world_size": self.world.size,
            "rank": self.world.rank,
            "sync_batchnorm": self.sync_batchnorm,
        }
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info
