"""Inference engines behind one interface, and the one function that decides which engine runs a model.

Adding an engine: one module with a class following `base.Backend`, and one line in ``_ENGINES``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import statistics
from pathlib import Path

import numpy as np

from ..cache import cache_dir, model_key, read_json, replace_json
from ..cpu import has_vnni
from ..errors import ModelError
from ..timing import time_interleaved
from .base import MODES, Backend, ModelIO, check_io

__all__ = ["BACKEND_NAMES", "Backend", "ModelIO", "check_io", "open_backend", "resolve_backend", "model_format"]

log = logging.getLogger(__name__)

_ENGINES = {
    "ort": ("cxr_edge.runtime.backends.ort", "OrtBackend"),
    "openvino": ("cxr_edge.runtime.backends.openvino", "OpenVinoBackend"),
}
BACKEND_NAMES = tuple(_ENGINES)
_FORMATS = {"ort": ("onnx",), "openvino": ("onnx", "openvino")}


def model_format(path: Path) -> str:
    """``onnx`` or ``openvino`` (IR) from the file, or a `ModelError` saying why it is neither."""
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    if not path.is_file():
        raise ModelError(f"{path}: not a file")
    if path.suffix.lower() == ".xml":
        if not path.with_suffix(".bin").exists():
            raise ModelError(f"{path}: OpenVINO IR without its weights file {path.with_suffix('.bin').name}")
        return "openvino"
    with open(path, "rb") as handle:
        head = handle.read(16)
    # An ONNX file is a protobuf ModelProto; its first field is ir_version (field 1, varint): byte 0x08.
    if path.suffix.lower() == ".onnx" and head[:1] == b"\x08":
        return "onnx"
    if head.lstrip().startswith(b"<?xml"):
        raise ModelError(f"{path}: looks like OpenVINO IR but is not named .xml")
    raise ModelError(f"{path}: not an ONNX model (.onnx) or OpenVINO IR (.xml + .bin)")


def _engine(name: str) -> type:
    module, cls = _ENGINES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise ModelError(f"backend {name!r} is not available here: {exc}") from None


def open_backend(path: str | Path, name: str, *, threads: int | None = None, mode: str = "latency") -> Backend:
    """Open a model file on a named engine (``ort`` or ``openvino``)."""
    path = Path(path)
    if name not in _ENGINES:
        raise ModelError(f"unknown backend {name!r}; choose one of auto, {', '.join(_ENGINES)}")
    if mode not in MODES:
        raise ModelError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    fmt = model_format(path)
    if fmt not in _FORMATS[name]:
        raise ModelError(f"{path}: {fmt} models run only on {' or '.join(n for n, f in _FORMATS.items() if fmt in f)}")
    return _engine(name)(path, threads=threads, mode=mode)


def resolve_backend(path: str | Path, requested: str = "auto", *, threads: int | None = None) -> tuple[str, str]:
    """Which engine runs this model, and why, in order:

    1. an explicit request (``ort`` or ``openvino``);
    2. OpenVINO IR runs on OpenVINO;
    3. an INT8 ONNX file on a CPU without VNNI runs on ONNX Runtime, whose exact U8U8 path avoids the 16-bit
       saturation that OpenVINO's kernels would suffer with full-range INT8 weights there;
    4. any other ONNX file runs on whichever engine was measured faster for it on this machine (measured once,
       at batch 1, and remembered in the cache); ONNX Runtime if OpenVINO is not installed.
    """
    path = Path(path)
    if requested != "auto":
        if requested not in _ENGINES:
            raise ModelError(f"unknown backend {requested!r}; choose one of auto, {', '.join(_ENGINES)}")
        return requested, "requested"
    if model_format(path) == "openvino":
        return "openvino", "OpenVINO IR"
    if importlib.util.find_spec("openvino") is None:
        return "ort", "OpenVINO is not installed"
    from ..model_info import QUANTIZATION_KEY  # model_info builds on this module

    if not has_vnni() and QUANTIZATION_KEY in open_backend(path, "ort", threads=threads).io.metadata:
        return "ort", "INT8 on a CPU without VNNI: exact on ONNX Runtime only"
    return _measured_faster(path, threads)


def _measured_faster(path: Path, threads: int | None, runs: int = 15) -> tuple[str, str]:
    folder = cache_dir("choices")
    record_path = folder / "backends.json" if folder else None
    key = model_key(path, threads, *(_version(d) for d in ("onnxruntime", "openvino")))
    record = read_json(record_path) if record_path else {}
    if key in record:
        choice = record[key]
        return choice["backend"], f"measured faster here ({choice['detail']}, remembered)"
    engines = {name: open_backend(path, name, threads=threads) for name in _ENGINES}
    first = next(iter(engines.values()))
    shape = tuple(d or 1 for d in first.io.input_shape)
    batch = np.zeros(shape, np.float32)
    for engine in engines.values():  # warm-up
        engine.run(batch)
    samples = time_interleaved([engine.run for engine in engines.values()], batch, runs)
    medians = {name: statistics.median(t) for name, t in zip(engines, samples, strict=True)}
    best = min(medians, key=medians.get)
    detail = ", ".join(f"{name} {ms:.2f} ms" for name, ms in medians.items())
    if record_path is not None:
        record[key] = {"backend": best, "detail": detail}
        replace_json(record_path, record)
    return best, f"measured faster here ({detail})"


def _version(distribution: str) -> str:
    """An installed package's version without importing it (importing OpenVINO costs time and memory)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"
