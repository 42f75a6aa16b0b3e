"""Model repositories for the servers that already exist: NVIDIA Triton and OpenVINO Model Server.

cxr-edge keeps decoding, the preprocessing contract, the gate and DICOM; a server only runs the network. This
module lays a model out the way each server reads it, from the model file's own facts (tensor names, shapes,
classes), so that a server and a cxr-edge client (``--backend kserve``) agree by construction:

- Triton: ``OUT/<name>/config.pbtxt`` + ``OUT/<name>/<version>/model.onnx`` run by the ``onnxruntime`` backend,
  and for an OpenVINO IR ``OUT/<name>-openvino/`` run by the ``openvino`` backend; ``labels.txt`` beside each
  config (``label_filename`` of the probabilities).
- OpenVINO Model Server: the same version folders, listed in ``OUT/config.json`` (``model_config_list``).
- Beside every version, ``cxr-edge.json``: the contract, the gate policy, the provenance and the file's SHA-256,
  so that a client can check it talks to the model it expects.

Adding a version leaves the older ones in place (both servers then serve every version; clients may pin one).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CxrEdgeError
from ..model.backends import open_backend
from ..model.contract import Contract
from ..model.model_file import (
    CONTRACT_KEY,
    GATE_KEY,
    INPUT_NAME,
    PROBABILITIES,
    PROVENANCE_KEY,
    QUANTIZATION_KEY,
    file_sha256,
    model_format,
    reader_engine,
)

__all__ = ["REPOSITORY_FORMATS", "ServedModel", "export_repository", "OVMS_CONFIG_SCHEMA", "DESCRIPTION_FILE",
           "triton_config"]

REPOSITORY_FORMATS = ("triton", "ovms", "both")
DESCRIPTION_FILE = "cxr-edge.json"
"""The file beside each version that says which cxr-edge model it is."""

MAX_BATCH = 16
"""The largest batch a server may form from concurrent requests."""

PREFERRED_BATCHES = (4, 8)
MAX_QUEUE_DELAY_US = 2000
"""Triton waits at most 2 ms for more requests to batch: small beside a 2-10 ms inference, large enough for the
requests of several X-ray rooms arriving together to share one."""

OVMS_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model_config_list"],
    "additionalProperties": False,
    "properties": {"model_config_list": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["config"], "additionalProperties": False,
        "properties": {"config": {
            "type": "object", "required": ["name", "base_path"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "base_path": {"type": "string", "minLength": 1},
                "target_device": {"type": "string"},
                "batch_size": {"type": ["string", "integer"]},
                "shape": {"type": ["string", "object"]},
                "nireq": {"type": "integer", "minimum": 0},
                "plugin_config": {"type": "object", "additionalProperties": {"type": ["string", "integer"]}},
                "model_version_policy": {"type": "object", "minProperties": 1, "maxProperties": 1, "properties": {
                    "all": {"type": "object", "maxProperties": 0},
                    "latest": {"type": "object", "required": ["num_versions"],
                               "properties": {"num_versions": {"type": "integer", "minimum": 1}}},
                    "specific": {"type": "object", "required": ["versions"],
                                 "properties": {"versions": {"type": "array", "items": {"type": "integer"}}}}},
                    "additionalProperties": False},
            }}}}}},
}
"""What OpenVINO Model Server's ``config.json`` may hold, for the fields cxr-edge writes (its documented model
configuration options); a misspelt key fails validation."""


@dataclass(frozen=True)
class ServedModel:
    """One model as a server will load it.

    Args:
        name: the server's model name.
        backend: ``onnxruntime`` or ``openvino`` (Triton's backend names).
        folder: ``OUT/<name>``.
        version_dir: ``OUT/<name>/<version>``.
        input_dims: the input's dimensions without the batch axis.
        outputs: output name -> dimensions without the batch axis.
        classes: the contract's class names, in output order.
    """

    name: str
    backend: str
    folder: Path
    version_dir: Path
    input_dims: tuple[int, ...]
    outputs: dict[str, tuple[int, ...]]
    classes: tuple[str, ...]


def export_repository(out: str | Path, models: list[Path], *, fmt: str = "both", name: str = "cxr-edge",
                      version: int = 1, threads: int = 2) -> list[ServedModel]:
    """Lay `models` out for Triton, OpenVINO Model Server or both under `out`.

    Args:
        out: the repository root (created if missing).
        models: model files; an ONNX file becomes model `name`, an OpenVINO IR `name`-openvino.
        fmt: ``triton``, ``ovms`` or ``both``.
        name: the served model name.
        version: the version folder to write; an existing one is refused rather than replaced.
        threads: inference threads per server instance.

    Raises:
        CxrEdgeError: an unknown format, two models of one format, or a version that already exists.
    """
    if fmt not in REPOSITORY_FORMATS:
        raise CxrEdgeError(f"unknown repository format {fmt!r}; choose one of {', '.join(REPOSITORY_FORMATS)}")
    if version < 1:
        raise CxrEdgeError(f"version {version}: versions are positive integers")
    out = Path(out)
    formats = [model_format(path) for path in models]
    if len(set(formats)) != len(formats):
        raise CxrEdgeError("give at most one ONNX model and one OpenVINO IR: each becomes one served model")
    served = []
    for path, model_fmt in zip(models, formats, strict=True):
        model_name = name if model_fmt == "onnx" else f"{name}-openvino"
        served.append(_place(out, Path(path), model_fmt, model_name, version))
    for model in served:
        (model.folder / "labels.txt").write_text("".join(f"{c}\n" for c in model.classes))
        if fmt in ("triton", "both"):
            (model.folder / "config.pbtxt").write_text(triton_config(model, threads))
    if fmt in ("ovms", "both"):
        _write_ovms_config(out, served, threads)
    return served


def _place(out: Path, path: Path, model_fmt: str, model_name: str, version: int) -> ServedModel:
    """Copy one model into ``out/model_name/version`` as its server expects it, with its description."""
    folder = out / model_name
    version_dir = folder / str(version)
    if version_dir.exists():
        raise CxrEdgeError(f"{version_dir}: version {version} of {model_name} already exists; give --version "
                           f"{_next_version(folder)} to add one (older versions are kept)")
    opened = open_backend(path, reader_engine(model_fmt).name)
    metadata = opened.io.metadata
    contract = Contract.from_metadata(metadata)
    shapes = {n: s for n, s in opened.io.output_shapes.items() if s is not None}
    version_dir.mkdir(parents=True)
    if model_fmt == "onnx":
        shutil.copyfile(path, version_dir / "model.onnx")
    else:
        _save_ir_with_dynamic_batch(path, version_dir / "model.xml")
    description = {
        "model": path.name, "format": model_fmt, "sha256": file_sha256(path),
        "precision": "int8" if QUANTIZATION_KEY in metadata else "fp32",
        "contract": json.loads(metadata[CONTRACT_KEY]),
        "gate": json.loads(metadata[GATE_KEY]) if GATE_KEY in metadata else None,
        "provenance": json.loads(metadata[PROVENANCE_KEY]) if PROVENANCE_KEY in metadata else None,
    }
    (version_dir / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2) + "\n")
    return ServedModel(model_name, "onnxruntime" if model_fmt == "onnx" else "openvino", folder, version_dir,
                       (contract.channels, *contract.input_size),
                       {n: tuple(int(d) for d in s[1:]) for n, s in shapes.items()}, contract.class_names)


def _next_version(folder: Path) -> int:
    numbers = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(numbers, default=0) + 1


def _save_ir_with_dynamic_batch(source: Path, target: Path) -> None:
    """The IR with its batch axis made dynamic, so that a server can batch requests (cxr-edge's own IR is
    compiled for batch 1, the fastest shape for one image at a time)."""
    import openvino as ov

    model = ov.Core().read_model(str(source))
    shape = model.input(INPUT_NAME).get_partial_shape()
    shape[0] = ov.Dimension.dynamic()
    model.reshape({INPUT_NAME: shape})
    ov.save_model(model, str(target), compress_to_fp16=False)


def triton_config(model: ServedModel, threads: int) -> str:
    """``config.pbtxt`` for one model: CPU instances, dynamic batching, the contract's tensors.

    An output with no dimension but the batch (the gate score) is declared ``dims: [1]`` with an empty
    ``reshape``, as Triton requires for per-item scalars.
    """

    def dims(values: tuple[int, ...]) -> str:
        return "[ " + ", ".join(str(v) for v in values) + " ]"

    outputs = []
    for output, shape in model.outputs.items():
        lines = [f'    name: "{output}"', "    data_type: TYPE_FP32", f"    dims: {dims(shape or (1,))}"]
        if not shape:
            lines.append("    reshape: { shape: [ ] }")
        if output == PROBABILITIES:
            lines.append('    label_filename: "labels.txt"')
        outputs.append("  {\n" + "\n".join(lines) + "\n  }")
    if model.backend == "onnxruntime":
        parameters = {"intra_op_thread_count": str(threads), "inter_op_thread_count": "1"}
    else:
        parameters = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads)}
    parameter_text = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in parameters.items())
    return (
        f'name: "{model.name}"\n'
        f'backend: "{model.backend}"\n'
        f"max_batch_size: {MAX_BATCH}\n"
        "version_policy: { all { } }\n"
        "input [\n  {\n"
        f'    name: "{INPUT_NAME}"\n    data_type: TYPE_FP32\n    dims: {dims(model.input_dims)}\n'
        "  }\n]\n"
        "output [\n" + ",\n".join(outputs) + "\n]\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: {dims(PREFERRED_BATCHES)}\n"
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n"
        "}\n"
        "parameters [\n" + parameter_text + "\n]\n"
    )


def _write_ovms_config(out: Path, served: list[ServedModel], threads: int) -> None:
    """``config.json`` listing every served model; entries of models exported earlier are kept."""
    path = out / "config.json"
    entries = json.loads(path.read_text())["model_config_list"] if path.exists() else []
    names = {model.name for model in served}
    entries = [e for e in entries if e.get("config", {}).get("name") not in names]
    for model in served:
        entries.append({"config": {
            "name": model.name, "base_path": model.name, "target_device": "CPU",
            "nireq": 4, "plugin_config": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads},
            "model_version_policy": {"all": {}},
        }})
    path.write_text(json.dumps({"model_config_list": entries}, indent=2) + "\n")
