"""A third engine for the structure test: the one module that adding an engine takes (plus its table entry).

It runs ONNX models on ONNX Runtime's plain session with default settings, so that its answers can be checked
against the real engines, and follows `cxr_edge.runtime.model.backends.base.Backend` and nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cxr_edge.runtime.model.backends.base import ModelIO
from cxr_edge.runtime.model.model_file import INPUT_NAME, PROBABILITIES

ENTRY = ('Engine("echo", "Echo engine", "Echo", ("onnx",), "tests.fake_engine:EchoBackend", "onnxruntime", '
         'writes=None)')
"""The engine table entry, as source text: what a developer adds to `ENGINES`."""


class EchoBackend:
    name = "echo"

    def __init__(self, path: Path, *, threads: int | None = None, mode: str = "latency") -> None:
        self.path = path
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shape = tuple(d if isinstance(d, int) else None for d in self.session.get_inputs()[0].shape)
        self.io = ModelIO(shape, tuple(o.name for o in self.session.get_outputs()),
                          dict(self.session.get_modelmeta().custom_metadata_map))
        self.settings = {"engine": "echo", "threads": threads, "mode": mode}

    def run(self, batch: np.ndarray, outputs: Sequence[str] = (PROBABILITIES,)) -> dict[str, np.ndarray]:
        return {name: value for name, value in zip(outputs, self.session.run(list(outputs), {INPUT_NAME: batch}),
                                                   strict=True)}
