"""The bottom floor: what a cxr-edge model file is, and which engines run it.

Everything that names a metadata key, a tensor, a model format, an engine or a shipped model file reads it
from here, so that the exporter that writes a model and the runtime that reads it cannot drift apart. This module
imports nothing of cxr-edge but its errors, so any other module may build on it without a cycle.

The engine table, ``ENGINES``, is the one place engines are described. Adding an engine is one entry here and
one module that provides a class following `cxr_edge.runtime.model.backends.base.Backend`; the CLI's choices, the
benchmark's rows, ``info``, quantisation and the backend resolver all read the table.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

__all__ = [
    "CONTRACT_KEY", "VERSION_KEY", "PROVENANCE_KEY", "ARCHITECTURE_KEY", "QUANTIZATION_KEY", "GATE_KEY",
    "INPUT_NAME", "PROBABILITIES", "CAM", "FEATURES", "GATE_SCORE", "ORIENTATION",
    "ModelFormat", "FORMATS", "model_format", "model_files", "model_size_mb", "file_sha256",
    "Engine", "ENGINES", "engine", "engines_for", "local_engines", "reader_engine", "quantizing_engines", "installed",
    "MODELS_DIR", "SHIPPED_FP32", "SHIPPED_INT8", "SHIPPED_OPENVINO", "resolve_model", "shipped_models",
]

# --- metadata keys (ONNX metadata_props; OpenVINO rt_info under "cxr_edge") ----------------------------------

CONTRACT_KEY = "cxr_edge.contract"
"""The preprocessing contract as JSON (`cxr_edge.runtime.model.contract.Contract`)."""
VERSION_KEY = "cxr_edge.format_version"
"""The contract's layout version."""
PROVENANCE_KEY = "cxr_edge.provenance"
"""Where the model came from: training run, data manifest hash, exporter, as JSON."""
ARCHITECTURE_KEY = "cxr_edge.architecture"
"""The network's name in the model zoo."""
QUANTIZATION_KEY = "cxr_edge.quantization"
"""Present (with the recipe) in INT8 models only: how the runtime tells INT8 from FP32."""
GATE_KEY = "cxr_edge.gate"
"""The reliability policy as JSON (`cxr_edge.runtime.model.gate.GatePolicy`): temperature, thresholds, populations."""

# --- tensor names --------------------------------------------------------------------------------------------

INPUT_NAME = "image"
"""The one input: N x C x H x W, already preprocessed by the contract."""
PROBABILITIES = "probabilities"
"""N x classes, softmax."""
CAM = "cam"
"""N x classes x h x w class activation maps (optional)."""
FEATURES = "features"
"""N x F pooled features, what the classifier reads (optional: the shortcut audit's linear probe)."""
GATE_SCORE = "gate_score"
"""N: how unlike the training images an input is (optional; 2 is a typical training film)."""
ORIENTATION = "orientation"
"""N x 5: probabilities of upright, rotated by 90, 180 or 270 degrees, and inverted (optional)."""


# --- formats -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFormat:
    """A model file format: its name, its name for people, the suffix of its main file and of a companion file
    (OpenVINO's weights)."""

    name: str
    label: str
    suffix: str
    companion: str | None = None


FORMATS: dict[str, ModelFormat] = {f.name: f for f in (
    ModelFormat("onnx", "ONNX", ".onnx"),
    ModelFormat("openvino", "OpenVINO IR", ".xml", ".bin"),
)}


def model_format(path: Path) -> str:
    """``onnx`` or ``openvino`` (IR) from the file, or a `ModelError` saying why it is neither."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    if not path.is_file():
        raise ModelError(f"{path}: not a file")
    ir = FORMATS["openvino"]
    if path.suffix.lower() == ir.suffix:
        if not path.with_suffix(ir.companion).exists():
            raise ModelError(f"{path}: OpenVINO IR without its weights file {path.with_suffix(ir.companion).name}")
        return ir.name
    with open(path, "rb") as handle:
        head = handle.read(16)
    # An ONNX file is a protobuf ModelProto; its first field is ir_version (field 1, varint): byte 0x08.
    if path.suffix.lower() == FORMATS["onnx"].suffix and head[:1] == b"\x08":
        return "onnx"
    if head.lstrip().startswith(b"<?xml"):
        raise ModelError(f"{path}: looks like OpenVINO IR but is not named .xml")
    raise ModelError(f"{path}: not an ONNX model (.onnx) or OpenVINO IR (.xml + .bin)")


def model_files(path: Path) -> list[Path]:
    """A model's files on disk: the file itself, plus the companion (weights) file of its format."""
    path = Path(path)
    companions = [f.companion for f in FORMATS.values() if f.companion and path.suffix.lower() == f.suffix]
    return [path] + [path.with_suffix(c) for c in companions]


def model_size_mb(path: Path) -> float:
    """Size of a model on disk, with every file it needs."""
    return sum(f.stat().st_size for f in model_files(path)) / 2**20


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- engines -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """One inference engine.

    Args:
        name: what users type (``--backend``) and what records store.
        label: its name for people.
        short: a short label for narrow tables.
        formats: model formats it runs.
        implementation: ``module:Class`` of its `Backend`, imported on first use only.
        distribution: the package that provides it (availability and version reports).
        writes: the format of the INT8 models `cxr-edge quantize` makes for it, or None if it makes none.
        remote: runs on a server (``--server``): never chosen by ``auto``, never a default benchmark row; the
            local model file supplies the contract the server's model is checked against.
        options: keyword arguments its backend takes beyond threads and mode (``server``, ``model_name``).
    """

    name: str
    label: str
    short: str
    formats: tuple[str, ...]
    implementation: str
    distribution: str
    writes: str | None = None
    remote: bool = False
    options: tuple[str, ...] = ()

    def load(self) -> type:
        """The engine's backend class; a `ModelError` if its package is missing here."""
        module, _, cls = self.implementation.partition(":")
        try:
            return getattr(importlib.import_module(module), cls)
        except ImportError as exc:
            raise ModelError(f"backend {self.name!r} is not available here: {exc}") from exc


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("ort", "ONNX Runtime", "ORT", ("onnx",), "cxr_edge.runtime.model.backends.ort:OrtBackend", "onnxruntime",
           writes="onnx"),
    Engine("openvino", "OpenVINO", "OpenVINO", ("onnx", "openvino"),
           "cxr_edge.runtime.model.backends.openvino:OpenVinoBackend", "openvino", writes="openvino"),
    Engine("kserve", "KServe v2 server", "KServe", ("onnx", "openvino"),
           "cxr_edge.runtime.model.backends.kserve:KServeBackend", "tritonclient", remote=True,
           options=("server", "model_name", "token_file", "server_ca")),
)}


def engine(name: str) -> Engine:
    """The engine of a name, or a `ModelError` listing the choices."""
    try:
        return ENGINES[name]
    except KeyError as exc:
        raise ModelError(f"unknown backend {name!r}; choose one of auto, {', '.join(ENGINES)}") from exc


def engines_for(fmt: str, *, remote: bool = False) -> list[Engine]:
    """The engines that run a model format here, in table order; with `remote`, also those that send it to a
    server."""
    return [e for e in ENGINES.values() if fmt in e.formats and (remote or not e.remote)]


def local_engines() -> list[str]:
    """Names of the engines that run on this machine (the default benchmark rows)."""
    return [e.name for e in ENGINES.values() if not e.remote]


def reader_engine(fmt: str) -> Engine:
    """The engine that opens a format when any would do (metadata, ``info``): the first in the table."""
    return engines_for(fmt)[0]


def quantizing_engines() -> list[Engine]:
    """The engines `cxr-edge quantize` makes INT8 models for."""
    return [e for e in ENGINES.values() if e.writes is not None]


def installed(engine_: Engine) -> bool:
    """True if the engine's package is installed, found without importing it (OpenVINO's import is slow)."""
    import importlib.metadata

    try:
        importlib.metadata.version(engine_.distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# --- shipped models ------------------------------------------------------------------------------------------

MODELS_DIR = Path(str(importlib.resources.files("cxr_edge.runtime").joinpath("models")))
"""Where the release model lives inside the package (``make release-model`` writes it)."""
SHIPPED_INT8 = "cxr-edge-int8.onnx"
SHIPPED_FP32 = "cxr-edge-fp32.onnx"
SHIPPED_OPENVINO = "cxr-edge-int8-openvino.xml"
_DEFAULT_ORDER = (SHIPPED_INT8, SHIPPED_FP32)
"""Shipped model files in order of preference when no model is given."""


def resolve_model(path: str | Path | None) -> Path:
    """The model to load: the given file, else the shipped INT8 model, else a `ModelError` saying what to do."""
    if path is not None:
        return Path(path)
    for name in _DEFAULT_ORDER:
        if (MODELS_DIR / name).exists():
            return MODELS_DIR / name
    raise ModelError("no --model given and this installation ships no model; pass --model FILE (.onnx or .xml)")


def shipped_models() -> list[Path]:
    """The shipped FP32 ONNX, INT8 ONNX and INT8 OpenVINO IR files that exist (the benchmark's default rows)."""
    return [MODELS_DIR / name for name in (SHIPPED_FP32, SHIPPED_INT8, SHIPPED_OPENVINO)
            if (MODELS_DIR / name).exists()]
