"""ONNX Runtime on the CPU: pinned threads, every graph optimisation, and the optimised graph cached on disk.

The first start optimises the graph (constant folding, fusions, QDQ -> QLinearConv, NCHWc layouts) and saves the
result under the cache folder, keyed by model file, ONNX Runtime version, options and CPU; later starts load the
saved graph with optimisation off, which skips that work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ...cache import cache_dir, model_key
from ...cpu import has_vnni
from ...errors import ModelError, first_line
from ..model_file import INPUT_NAME, PROBABILITIES
from .base import ModelIO

__all__ = ["OrtBackend"]

log = logging.getLogger(__name__)


class OrtBackend:
    """An ONNX model in an ONNX Runtime CPU session.

    Args:
        path: ``.onnx`` file.
        threads: intra-op threads (default: every core).
        mode: ``latency`` or ``throughput`` (recorded; ONNX Runtime needs no different settings for them).

    On CPUs without VNNI, INT8 models run with ONNX Runtime's exact U8U8 products (``session.x64quantprecision``):
    the fast U8S8 kernel adds pairs of uint8 x int8 products in 16 bits and saturates with the full-range 8-bit
    weights cxr-edge quantises to (7-bit weights avoid it but cost about 2 points of accuracy). VNNI CPUs
    accumulate in 32 bits and keep the fast path.

    Worker threads never spin-wait between runs: spinning gained 3-6 % here (EfficientNet-Lite0 INT8 3.45 vs
    3.67 ms) but burns the cores that the decoding threads, or a second model in the same process, need.
    """

    name = "ort"

    def __init__(self, path: Path, *, threads: int | None = None, mode: str = "latency") -> None:
        self.path = path
        threads = threads or os.cpu_count() or 1
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        exact_int8 = not has_vnni()
        if exact_int8:  # see the class docstring
            options.add_session_config_entry("session.x64quantprecision", "1")
        options.log_severity_level = 3
        cached = self._cached_graph(path, threads)
        source = path
        if cached is not None and cached.exists():
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            source = cached
        else:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if cached is not None:
                options.optimized_model_filepath = str(cached)
        try:
            self.session = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            if source != path:  # a damaged cache entry: drop it and build from the model itself
                log.debug("ignoring cached graph %s: %s", source, exc)
                cached.unlink(missing_ok=True)
                self.__init__(path, threads=threads, mode=mode)
                return
            raise ModelError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)})") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ModelError(f"{path}: expected one input named {INPUT_NAME!r}, got {[i.name for i in inputs]}")
        shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        outputs = tuple(o.name for o in self.session.get_outputs())
        # The saved optimised graph keeps the original metadata, but read it from the source of truth anyway.
        metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        output_shapes = {o.name: _static(o.shape) for o in self.session.get_outputs()}
        self.io = ModelIO(shape, outputs, metadata, output_shapes)
        self.settings = {"engine": f"onnxruntime {ort.__version__}", "provider": "CPUExecutionProvider",
                         "threads": threads, "mode": mode, "graph_cache": str(cached) if cached else None,
                         "graph_cache_hit": source != path, "exact_int8": exact_int8}

    @staticmethod
    def _cached_graph(path: Path, threads: int) -> Path | None:
        folder = cache_dir("ort")
        if folder is None:
            return None
        return folder / f"{model_key(path, ort.__version__, threads, 'all')}.onnx"

    def run(self, batch: np.ndarray, outputs: Sequence[str] = (PROBABILITIES,)) -> dict[str, np.ndarray]:
        names = list(outputs)
        return dict(zip(names, self.session.run(names, {INPUT_NAME: batch}), strict=True))


def _static(shape: object) -> tuple[int | None, ...] | None:
    """An ONNX Runtime shape with symbolic dimensions as None (None if the graph gives no shape)."""
    if not isinstance(shape, (list, tuple)):
        return None
    return tuple(d if isinstance(d, int) else None for d in shape)
