"""What this CPU can do for INT8, read once from /proc/cpuinfo: for cache keys, the bench and the engine choice."""

from __future__ import annotations

import ctypes
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
    """The CPU flags a program here can use (``avx2``, ``avx512_vnni``, ...); empty without /proc/cpuinfo.

    /proc/cpuinfo lists what the processor reports, and a virtual machine may report instruction sets whose
    register state its kernel does not enable (AMX tiles above all): such flags are dropped, as the kernel's own
    list of supported extended states (``arch_prctl(ARCH_GET_XCOMP_SUPP)``) says.
    """
    flags = _cpuinfo()[1]
    states = _xsave_states()
    if states is None:
        return flags
    unusable = set()
    if states & _AMX_STATES != _AMX_STATES:
        unusable |= {f for f in flags if f.startswith("amx")}
    if states & _AVX512_STATES != _AVX512_STATES:
        unusable |= {f for f in flags if f.startswith("avx512")}
    return flags - unusable


_AVX512_STATES = 0b111 << 5  # opmask, ZMM_Hi256, Hi16_ZMM
_AMX_STATES = 0b11 << 17  # XTILECFG, XTILEDATA


@functools.cache
def _xsave_states() -> int | None:
    """The extended register states the Linux kernel supports for processes, or None where unknown."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return None
    arch_prctl, get_xcomp_supp = 158, 0x1021  # x86_64 syscall number; ARCH_GET_XCOMP_SUPP (Linux 5.16+)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        states = ctypes.c_uint64(0)
        if libc.syscall(arch_prctl, get_xcomp_supp, ctypes.byref(states)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return states.value


def has_vnni() -> bool:
    """True if the CPU has VNNI (AVX512-VNNI or AVX-VNNI).

    Without it, x86 INT8 kernels multiply uint8 activations by int8 weights with VPMADDUBSW, which adds pairs of
    products in 16 bits and saturates with full-range weights; VNNI's VPDPBUSD accumulates in 32 bits and cannot.
    Non-x86 CPUs answer False, which only makes the engine choice more careful.
    """
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})
