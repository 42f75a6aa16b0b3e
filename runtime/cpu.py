"""What this CPU can do for INT8, read once from /proc/cpuinfo: for cache keys, the bench and the engine choice."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_model", "cpu_flags", "has_vnni", "INT8_FLAGS"]

INT8_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
              "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16"}
"""The instruction-set flags that decide INT8 speed and exactness, with their usual names."""


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or "unknown", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    """The CPU's marketing name (``Intel(R) Xeon(R) ...``)."""
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The kernel's CPU flags (``avx2``, ``avx512_vnni``, ...); empty where /proc/cpuinfo is unavailable."""
    return _cpuinfo()[1]


def has_vnni() -> bool:
    """True if the CPU has VNNI (AVX512-VNNI or AVX-VNNI).

    Without it, x86 INT8 kernels multiply uint8 activations by int8 weights with VPMADDUBSW, which adds pairs of
    products in 16 bits and saturates with full-range weights; VNNI's VPDPBUSD accumulates in 32 bits and cannot.
    Non-x86 CPUs answer False, which only makes the engine choice more careful.
    """
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})
