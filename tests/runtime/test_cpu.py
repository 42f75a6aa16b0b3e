"""INT8 exactness follows the CPU: VNNI read from /proc/cpuinfo decides the ONNX Runtime path and the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

import cxr_edge.runtime.backends as backends
import cxr_edge.runtime.backends.ort as ort_backend
from cxr_edge.runtime import cpu
from cxr_edge.runtime.backends import open_backend, resolve_backend
from tests.factories import tiny_int8, tiny_onnx


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_EDGE_CACHE", str(tmp_path / "cache"))


def test_flags_come_from_proc_cpuinfo() -> None:
    line = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    flags = set(line.split(":", 1)[1].split())
    assert cpu.cpu_flags() == flags
    assert cpu.has_vnni() == bool(flags & {"avx512_vnni", "avx_vnni"})


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
