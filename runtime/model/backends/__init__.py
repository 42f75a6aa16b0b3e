"""Inference engines behind one interface, and the one function that decides which engine runs a model.

The engines themselves are described in `cxr_edge.runtime.model.model_file.ENGINES`; each is one module in this package
(or anywhere importable) with a class following `base.Backend`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ...cache import cache_dir, model_key, read_json
from ...cpu import has_vnni
from ...errors import ModelError
from ...files import replace_json
from ...timing import time_interleaved
from ..model_file import ENGINES, FORMATS, QUANTIZATION_KEY, engine, engines_for, installed, model_format
from .base import MODES, Backend, ModelIO, check_io

__all__ = ["Backend", "ModelIO", "check_io", "open_backend", "resolve_backend"]

log = logging.getLogger(__name__)


def open_backend(path: str | Path, name: str, *, threads: int | None = None, mode: str = "latency",
                 **options: Any) -> Backend:
    """Open a model file on a named engine (a key of ``ENGINES``).

    Args:
        options: what a remote engine needs (``server``, ``model_name``); ignored by the others, so callers may
            pass them whatever the engine.
    """
    path = Path(path)
    chosen = engine(name)
    if mode not in MODES:
        raise ModelError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    fmt = model_format(path)
    if fmt not in chosen.formats:
        raise ModelError(f"{path}: {fmt} models run only on {' or '.join(e.name for e in engines_for(fmt))}")
    given = {k: v for k, v in options.items() if k in chosen.options and v is not None}
    if chosen.remote and "server" not in given:
        raise ModelError(f"--backend {chosen.name} needs --server URL (the inference server to send images to)")
    return chosen.load()(path, threads=threads, mode=mode, **given)


def resolve_backend(path: str | Path, requested: str = "auto", *, threads: int | None = None) -> tuple[str, str]:
    """Which engine runs this model, and why, in order:

    1. an explicit request (a name in ``ENGINES``);
    2. a format only one installed engine runs goes to that engine (OpenVINO IR to OpenVINO);
    3. an INT8 ONNX file on a CPU without VNNI runs on ONNX Runtime, whose exact U8U8 path avoids the 16-bit
       saturation that OpenVINO's kernels would suffer with full-range INT8 weights there;
    4. otherwise, whichever of the engines that run the format was measured faster for this model on this
       machine (measured once, at batch 1, and remembered in the cache).
    """
    path = Path(path)
    if requested != "auto":
        return engine(requested).name, "requested"
    fmt = model_format(path)
    candidates = [e.name for e in engines_for(fmt) if installed(e)]
    if not candidates:
        raise ModelError(f"{path}: no installed engine runs {fmt} models (engines: {', '.join(ENGINES)})")
    if len(candidates) == 1:
        missing = [e.label for e in engines_for(fmt) if e.name not in candidates]
        return candidates[0], f"{', '.join(missing)} not installed" if missing else FORMATS[fmt].label
    if "ort" in candidates and not has_vnni() and \
            QUANTIZATION_KEY in open_backend(path, "ort", threads=threads).io.metadata:
        return "ort", "INT8 on a CPU without VNNI: exact on ONNX Runtime only"
    return _measured_faster(path, candidates, threads)


def _measured_faster(path: Path, candidates: list[str], threads: int | None, runs: int = 15) -> tuple[str, str]:
    folder = cache_dir("choices")
    record_path = folder / "backends.json" if folder else None
    key = model_key(path, threads, *(f"{n}={_version(ENGINES[n].distribution)}" for n in candidates))
    record = read_json(record_path) if record_path else {}
    if key in record:
        choice = record[key]
        return choice["backend"], f"measured faster here: {choice['detail']}, remembered"
    engines = {name: open_backend(path, name, threads=threads) for name in candidates}
    first = next(iter(engines.values()))
    shape = tuple(d or 1 for d in first.io.input_shape)
    batch = np.zeros(shape, np.float32)
    runners = [lambda b, e=opened: e.run(b, e.io.outputs) for opened in engines.values()]  # every output
    for runner in runners:  # warm-up
        runner(batch)
    samples = time_interleaved(runners, batch, runs)
    medians = {name: statistics.median(t) for name, t in zip(engines, samples, strict=True)}
    best = min(medians, key=medians.get)
    detail = ", ".join(f"{name} {ms:.2f} ms" for name, ms in medians.items())
    if record_path is not None:
        record[key] = {"backend": best, "detail": detail}
        replace_json(record_path, record, best_effort=True)
    return best, f"measured faster here: {detail}"


def _version(distribution: str) -> str:
    """An installed package's version without importing it (importing OpenVINO costs time and memory)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"
