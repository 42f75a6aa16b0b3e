"""INT8 exactness follows the CPU: VNNI read from /proc/cpuinfo decides the ONNX Runtime path and the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

import cxr_edge.runtime.model.backends as backends
import cxr_edge.runtime.model.backends.ort as ort_backend
from cxr_edge.runtime import cpu
from cxr_edge.runtime.model.backends import open_backend, resolve_backend
from tests.factories import tiny_int8, tiny_onnx


def test_flags_come_from_proc_cpuinfo_and_what_the_kernel_enables() -> None:
    line = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    flags = set(line.split(":", 1)[1].split())
    states = cpu._xsave_states()
    assert states is not None and states & 0b111 == 0b111  # x87, SSE and AVX state: any x86-64 Linux of this decade
    unusable = set()
    if states & (0b11 << 17) != 0b11 << 17:
        unusable |= {f for f in flags if f.startswith("amx")}
    if states & (0b111 << 5) != 0b111 << 5:
        unusable |= {f for f in flags if f.startswith("avx512")}
    assert cpu.cpu_flags() == flags - unusable
    assert cpu.has_vnni() == bool((flags - unusable) & {"avx512_vnni", "avx_vnni"})


def test_amx_and_avx512_flags_count_only_where_the_kernel_enables_their_registers(monkeypatch) -> None:
    """A virtual machine may report AMX in /proc/cpuinfo without the kernel enabling its tile state."""
    reported = frozenset({"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16", "amx_tile"})
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ("a CPU", reported))
    monkeypatch.setattr(cpu, "_xsave_states", lambda: 0b1110_0111)  # AVX-512 state, no tile state
    assert cpu.cpu_flags() == {"avx2", "avx512f", "avx512_vnni"}
    monkeypatch.setattr(cpu, "_xsave_states", lambda: 0b111)  # neither
    assert cpu.cpu_flags() == {"avx2"} and not cpu.has_vnni()
    monkeypatch.setattr(cpu, "_xsave_states", lambda: 0b11 << 17 | 0b1110_0111)
    assert cpu.cpu_flags() == reported
    monkeypatch.setattr(cpu, "_xsave_states", lambda: None)  # unknown (not Linux on x86-64): trust the report
    assert cpu.cpu_flags() == reported


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_onnx_engine_and_exactness_follow_vnni(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    vnni: bool) -> None:
    """Without VNNI an INT8 ONNX model runs on ONNX Runtime with exact U8U8 products; FP32 models are unaffected."""
    monkeypatch.setattr(backends, "has_vnni", lambda: vnni)
    monkeypatch.setattr(ort_backend, "has_vnni", lambda: vnni)
    fp32 = tiny_onnx(tmp_path / "tiny.onnx", size=64)
    int8 = tiny_int8(fp32, tmp_path / "tiny-int8.onnx")
    engine, reason = resolve_backend(int8)
    if vnni:
        assert "measured faster" in reason
    else:
        assert (engine, reason) == ("ort", "INT8 on a CPU without VNNI: exact on ONNX Runtime only")
    assert "measured faster" in resolve_backend(fp32)[1]
    engine_session = open_backend(int8, "ort")
    assert engine_session.settings["exact_int8"] is (not vnni)
    options = engine_session.session.get_session_options()
    if vnni:
        with pytest.raises(Exception, match="does not have configuration"):
            options.get_session_config_entry("session.x64quantprecision")
    else:
        assert options.get_session_config_entry("session.x64quantprecision") == "1"
