"""What a model file is: contract, provenance and hashes, for `cxr-edge info` and reports."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .backends import model_format, open_backend
from .classifier import resolve_model
from .contract import METADATA_KEY, VERSION_KEY, Contract

__all__ = ["model_info", "file_sha256", "model_files", "model_size_mb", "PROVENANCE_KEY", "ARCHITECTURE_KEY",
           "QUANTIZATION_KEY"]

PROVENANCE_KEY = "cxr_edge.provenance"
ARCHITECTURE_KEY = "cxr_edge.architecture"
QUANTIZATION_KEY = "cxr_edge.quantization"
"""Present (with the recipe) in INT8 models only: how the runtime tells INT8 from FP32."""


def model_files(path: Path) -> list[Path]:
    """A model's files on disk: the file itself, plus the weights file of an OpenVINO IR."""
    return [path] + ([path.with_suffix(".bin")] if path.suffix.lower() == ".xml" else [])


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


def model_info(path: str | Path | None) -> dict:
    """Contract, provenance and SHA-256 of every file of a model; a model without a contract is refused."""
    model_path = resolve_model(path)
    fmt = model_format(model_path)
    engine = open_backend(model_path, "ort" if fmt == "onnx" else "openvino")
    metadata = engine.io.metadata
    contract = Contract.from_metadata(metadata)
    try:
        provenance = json.loads(metadata.get(PROVENANCE_KEY, "{}"))
    except json.JSONDecodeError:
        provenance = {"unreadable": metadata[PROVENANCE_KEY]}
    other = {k: v for k, v in metadata.items() if k not in (METADATA_KEY, VERSION_KEY, PROVENANCE_KEY)}
    return {
        "model": {"path": str(model_path), "format": fmt, "architecture": metadata.get(ARCHITECTURE_KEY, "unknown"),
                  "inputs": list(engine.io.input_shape), "outputs": list(engine.io.outputs),
                  "format_version": metadata.get(VERSION_KEY)} | ({"metadata": other} if other else {}),
        "contract": contract.to_dict(),
        "provenance": provenance,
        "files": {str(f): {"bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in model_files(model_path)},
    }
