"""Which number format training computes in: bf16 where the hardware has it natively, else fp32.

bf16 matrix products are several times faster than fp32 on CPUs with AVX512_BF16 or AMX units and
on recent GPUs, and tens of times slower on CPUs that must emulate them (AVX2 only). So `auto`
looks at the hardware, never at a constant: CUDA devices that report bf16 support, CPUs whose
flags list amx_bf16 or avx512_bf16. Only the model's forward pass runs under bf16 autocast; the
loss terms, the optimizer, evaluation and every number written to disk stay fp32.
"""

from __future__ import annotations

import contextlib
import functools

import torch

NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matrix products in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS)
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """ "fp32" or "bf16": what a run asking for `requested` computes in on `device`."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return requested


def autocast(precision: str, device: torch.device):
    """The context the forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
