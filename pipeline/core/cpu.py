"""The CPU a run computes on: its instruction-set family, and the pins that make results
byte-identical across families.

Kernels pick their instruction set at run time (ATen by CPU capability, oneDNN by ISA, MKL by code
path), so the same fp32 training differs in the last bits between an AVX2-only and an AVX-512 CPU,
and those bits grow into different weights. `train.portable` pins all three to AVX2, which every
x86 CPU of both families runs. They are read when torch first computes, so they must be in the
environment before torch is imported: the stage processes set them right after reading the
parameters (`pin_portable`). This module must not import torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.core.errors import PipelineError

PINS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
FAMILY_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
# Instructions that compute bf16 natively; without them torch emulates bf16 and runs slower than
# fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _words() -> set[str] | None:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None


def flags() -> str:
    """The flags that tell the families apart, as /proc/cpuinfo spells them, e.g. "avx2 avx512_bf16
    avx512f"."""
    words = _words()
    if words is None:
        return "unknown"
    return " ".join(sorted(f for f in FAMILY_FLAGS if f in words)) or "none of " + " ".join(
        FAMILY_FLAGS
    )


def native_bf16(words: set[str] | None = None) -> bool:
    """Whether this CPU (or the given /proc/cpuinfo words) computes bf16 natively (AVX512-BF16 or
    AMX-BF16)."""
    words = _words() if words is None else words
    return bool(words) and any(f in words for f in NATIVE_BF16_FLAGS)


def pin_portable(portable: bool) -> None:
    """For a portable run (`train.portable`), put the pins into this process's environment before
    torch is imported; processes it starts (torchrun's workers) inherit them. The one place a
    stage's process pins its CPU. Raises PipelineError when torch is already loaded without them."""
    if not portable or pinned():
        return
    if "torch" in sys.modules:
        raise PipelineError(
            "train.portable: torch was imported before the CPU pins could be set; run the stage "
            "command "
            "(python -m pipeline.stages.train) or export "
            + " ".join(f"{k}={v}" for k, v in PINS.items())
        )
    os.environ.update(PINS)


def pinned() -> bool:
    """Whether this process computes with the pins."""
    return all(os.environ.get(k) == v for k, v in PINS.items())
