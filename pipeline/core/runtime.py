"""Where and how a run computes: device, threads, precision, memory format, and seeding.

What these decide changes the numbers a run produces (and how fast), so they are decided here alone,
from the parameters and what this machine has, and recorded with every run (metrics/train.json).
"""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pipeline.core import cpu, models
from pipeline.core.errors import PipelineError
from pipeline.core.params import TrainParams

if TYPE_CHECKING:
    from pipeline.core.distributed import World


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # None = plain fp32
    channels_last: bool

    def autocast(self) -> AbstractContextManager[Any]:
        """Autocast context for forward passes (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def place(self, model: nn.Module) -> nn.Module:
        """Move `model` to the device and memory format it is trained in (before its optimizer is
        built)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images on the device, in the memory format of the model."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 runs natively: the CPU has AVX512-BF16 or AMX-BF16 (cpu.native_bf16, from its
    own flags), or the GPU supports it. Elsewhere bf16 autocast is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu.native_bf16()


def uses_cuda(cfg: TrainParams) -> bool:
    """Whether training runs on CUDA (train.device, or auto with a GPU present)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is cuda, but no CUDA device is available")
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def make_runtime(cfg: TrainParams, world: World | None = None) -> Runtime:
    """Pick device, threads and precision from the parameters and what this machine has (and, for
    one of several processes, its GPU or its share of the cores)."""
    cuda = uses_cuda(cfg)
    device = torch.device("cuda" if cuda else "cpu")
    if cuda and world is not None:
        device = torch.device("cuda", world.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    threads = cfg.threads or (world.threads() if world is not None else 0)
    if threads:
        torch.set_num_threads(threads)
    native = bf16_native(device)
    slow = device.type == "cpu" and cfg.precision == "auto" and models.depthwise(cfg.model)
    dtype = torch.bfloat16 if uses_bf16(cfg, native, depthwise_on_cpu=slow) else None
    return Runtime(device=device, autocast_dtype=dtype, channels_last=cfg.channels_last)


def uses_bf16(cfg: TrainParams, native: bool, depthwise_on_cpu: bool = False) -> bool:
    """Whether training autocasts to bf16: asked for, or `auto` where the device computes bf16
    natively (`native`). Emulated bf16 (an AVX-512 CPU without AVX512-BF16/AMX) is slower than fp32,
    and a portable run is fp32 by definition. `auto` also stays fp32 for a network with depthwise
    convolutions trained on a CPU (`depthwise_on_cpu`): oneDNN computes their bf16 weight gradients
    with AVX-512 kernels, not AMX, so the casts cost more than bf16 saves (docs/transfer.md,
    section 3)."""
    return cfg.precision == "bf16" or (
        cfg.precision == "auto" and native and not cfg.portable and not depthwise_on_cpu
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels.

    With this, a fixed thread count and the explicit generators used for splits and shuffling, the
    same code, parameters and data on the same machine give byte-identical weights.
    """
    # cuBLAS needs this before CUDA initialises to have deterministic GEMMs (ignored on the CPU).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # The same switch as torch.use_deterministic_algorithms(True) (its documented alternative
    # interface), without importing torch._inductor's config for a compiler this pipeline never
    # runs.
    torch.set_deterministic_debug_mode("error")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
