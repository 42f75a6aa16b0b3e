"""Adopt a classifier made elsewhere: its network, a contract that says how to feed it, one cxr-edge model file.

A source is an ONNX file, a TorchScript file, a timm architecture name or ``module:function`` that builds an
``nn.Module`` (with a weights file for the last two). The contract is a JSON file of `Contract` fields (or the
contract of an existing model, ``--like``) plus what the source outputs: ``logits``, to which a softmax is added,
or ``probabilities``. torchxrayvision-style value ranges are stated as ``"value_range": [-1024, 1024]`` and become
the contract's mean and standard deviation. The written file carries the contract in its metadata like every
cxr-edge model; its probabilities are proven equal to the source framework's (ONNX Runtime on the source file, or
PyTorch) within the same 1e-4 as an exported model, on ONNX Runtime and on OpenVINO.

An adopted model has no gate (the gate reads features and scores a foreign network does not give) and no
abstention threshold: the runtime classifies every image with it and says so in every record.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..runtime.errors import ContractError, CxrEdgeError
from ..runtime.model.contract import Contract
from ..runtime.model.model_file import ARCHITECTURE_KEY, INPUT_NAME, PROBABILITIES, PROVENANCE_KEY, file_sha256
from ..runtime.model.preprocess import preprocess, stack
from .provenance import git_commit, package_version, set_onnx_metadata
from .to_onnx import OPSET, PARITY_TOLERANCE
from .zoo import read_torch_file

__all__ = ["AdoptSpec", "AdoptReport", "SOURCE_OUTPUTS", "read_spec", "spec_like", "adopt"]

SOURCE_OUTPUTS = ("logits", "probabilities")
"""What a source network's first output holds: raw scores (a softmax is added) or probabilities already."""


@dataclass(frozen=True)
class AdoptSpec:
    """The contract an adopted model will carry, and what its source outputs."""

    contract: Contract
    source_outputs: str = "logits"


@dataclass
class AdoptReport:
    """What `adopt` wrote and proved."""

    path: Path
    source: str
    inputs: int
    max_diff_ort: float
    max_diff_openvino: float
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None


def read_spec(path: str | Path) -> AdoptSpec:
    """A contract JSON file: `Contract` fields, ``source_outputs`` and optionally ``value_range`` [low, high].

    Raises:
        CxrEdgeError: one line naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CxrEdgeError(f"{path}: not a readable contract file ({exc})") from exc
    if not isinstance(data, dict):
        raise CxrEdgeError(f"{path}: a contract file holds one JSON object")
    source_outputs = data.pop("source_outputs", "logits")
    if source_outputs not in SOURCE_OUTPUTS:
        raise CxrEdgeError(f"{path}: source_outputs must be one of {', '.join(SOURCE_OUTPUTS)}, "
                           f"got {source_outputs!r}")
    if "value_range" in data:
        data |= _normalisation_for_range(path, data.pop("value_range"), data)
    data.setdefault("format_version", 3)
    try:
        return AdoptSpec(Contract(**data), source_outputs)
    except (ContractError, TypeError, ValueError) as exc:
        raise CxrEdgeError(f"{path}: {exc}") from exc


def _normalisation_for_range(path: Path, value_range: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Mean and std that carry pixels in [0, 1] to [low, high], one per channel; refused beside a mean or std."""
    if "mean" in data or "std" in data:
        raise CxrEdgeError(f"{path}: give either value_range or mean and std, not both: they would contradict")
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError) as exc:
        raise CxrEdgeError(f"{path}: value_range must be two numbers [low, high], got {value_range!r}") from exc
    if not high > low:
        raise CxrEdgeError(f"{path}: value_range must rise, got {value_range!r}")
    channels = int(data.get("channels", 3))
    return {"mean": [-low / (high - low)] * channels, "std": [1 / (high - low)] * channels}


def spec_like(model_path: str | Path) -> AdoptSpec:
    """The contract of an existing cxr-edge ONNX model, for a network trained to replace it."""
    import onnx

    try:
        proto = onnx.load(str(model_path), load_external_data=False)
        return AdoptSpec(Contract.from_metadata({p.key: p.value for p in proto.metadata_props}), "logits")
    except Exception as exc:  # unreadable file or no contract: one line either way
        raise CxrEdgeError(f"{model_path}: no cxr-edge contract to copy ({str(exc).splitlines()[0]})") from exc


def adopt(source: str, out: str | Path, spec: AdoptSpec, *, weights: str | Path | None = None,
          val: Sequence[Path] = (), sensitivity: float | None = None) -> AdoptReport:
    """Write `out` from `source` with `spec`'s contract; refuse (and leave no file) when parity fails.

    With `val` (labelled class folders named as the contract's classes) the written model also carries a
    calibration fitted on those films (a temperature) and an abstention threshold, as `cxr-edge validate` fits
    them for a site; a multi-label model gets each finding's operating point instead (the Youden point, or the
    highest threshold keeping `sensitivity`). It still has no gate.

    Raises:
        CxrEdgeError: the output exists, the source cannot be read, or it contradicts the contract.
    """
    import onnx

    out = Path(out)
    if out.exists():
        raise CxrEdgeError(f"{out} already exists; choose another output file")
    notes: list[str] = []
    if source.endswith(".onnx"):
        if weights is not None:
            raise CxrEdgeError(f"{source}: an ONNX file holds its weights; --weights is for PyTorch sources")
        proto, reference = _from_onnx(Path(source), spec)
    else:
        module = load_module(source, weights, spec.contract, notes)
        proto, reference = _from_torch(module, spec)
    set_onnx_metadata(proto, spec.contract.to_metadata() | {
        ARCHITECTURE_KEY: f"adopted: {Path(source).name}",
        PROVENANCE_KEY: json.dumps(_provenance(source, weights), sort_keys=True)})
    proto.producer_name, proto.producer_version = "cxr-edge adopt", package_version()
    onnx.checker.check_model(proto, full_check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    try:
        inputs, diff_ort, diff_ov = _check_parity(source, out, spec.contract, reference)
        calibration = _fit_on(out, val, sensitivity) if val else None
    except Exception:
        out.unlink(missing_ok=True)
        raise
    return AdoptReport(out, source, inputs, diff_ort, diff_ov, notes, calibration)


def _fit_on(model: Path, val: Sequence[Path], sensitivity: float | None = None) -> dict[str, Any]:
    """Fit on labelled films and write into the model: a multi-label model's operating points, or a four-class
    model's temperature and abstention threshold."""

    from ..runtime.evaluation.validate import fit_calibration, labelled_probabilities
    from ..runtime.model.classifier import Classifier
    from ..runtime.model.gate import GatePolicy

    classifier = Classifier.open(model, backend="ort", gate="off")
    if classifier.contract.multi_label:
        return _fit_operating_points(classifier, val, sensitivity)
    samples, probabilities, _ = labelled_probabilities(classifier, val)
    calibration = fit_calibration(samples, probabilities, classifier)
    policy = GatePolicy(abstain_below=calibration["after"]["abstain"]["abstain_below"], abstain_on="finding",
                        site_scale=calibration["scale"], validation_images=len(samples),
                        fitted_on=f"adopt --val: {len(samples)} labelled films")
    _add_metadata(model, policy.to_metadata())
    return calibration


def _add_metadata(model: Path, entries: dict[str, str]) -> None:
    """Add or replace metadata entries of a written model, keeping the others."""
    import onnx

    proto = onnx.load(str(model))
    set_onnx_metadata(proto, {p.key: p.value for p in proto.metadata_props} | entries)
    onnx.save(proto, str(model))


def _fit_operating_points(classifier: Any, val: Sequence[Path], sensitivity: float | None) -> dict[str, Any]:
    """Each finding's operating point from labelled folders (`cxr_edge.runtime.evaluation.findings`), written
    into the model's contract, with the figures at those points."""

    from ..runtime.evaluation.findings import finding_figures, operating_point, read_finding_folders

    contract = classifier.contract
    labels = read_finding_folders(val, contract.class_names)
    results = classifier.predict(list(labels.paths), batch_size=16)
    read = np.array([r.probabilities is not None for r in results])
    if not read.any():
        raise CxrEdgeError(f"none of the {len(results)} labelled films could be read")
    scores = np.array([[r.probabilities[n] for n in contract.class_names] for r in results if r.probabilities])
    present = labels.present[read]
    points = tuple(operating_point(scores[:, i], present[:, i], sensitivity) for i in range(contract.num_classes))
    fitted = dataclasses.replace(contract, operating_points=points)
    _add_metadata(classifier.path, fitted.to_metadata())
    return {"films": int(read.sum()), "rule": "Youden" if sensitivity is None else f"sensitivity {sensitivity}",
            "findings": finding_figures(scores, present, points, contract.class_names)}


def load_module(source: str, weights: str | Path | None, contract: Contract, notes: list[str]) -> nn.Module:
    """A TorchScript file, ``module:function`` or a timm architecture name as an ``nn.Module`` in eval mode."""
    path = Path(source)
    if path.is_file():
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise CxrEdgeError(f"{source}: not a TorchScript file ({str(exc).splitlines()[0]})") from exc
    elif ":" in source:
        module = _from_function(source)
    else:
        module = _from_timm(source, contract)
    if weights is not None:
        _load_weights(module, Path(weights))
    elif not isinstance(module, torch.jit.ScriptModule):
        notes.append("no weights file: the network's weights are its builder's (random unless it loads its own)")
    return module.eval()


def _from_function(source: str) -> nn.Module:
    module_name, _, function_name = source.partition(":")
    try:
        builder = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise CxrEdgeError(f"{source}: cannot import the builder ({exc})") from exc
    built = builder()
    if not isinstance(built, nn.Module):
        raise CxrEdgeError(f"{source}: the builder returned {type(built).__name__}, not a torch.nn.Module")
    return built


def _from_timm(name: str, contract: Contract) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise CxrEdgeError(f"{name}: neither a file, nor module:function, nor a timm architecture")
    return timm.create_model(name, pretrained=False, num_classes=contract.num_classes, in_chans=contract.channels)


def _load_weights(module: nn.Module, path: Path) -> None:
    state = read_torch_file(path, "PyTorch weights file")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CxrEdgeError(f"{path}: holds {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CxrEdgeError(f"{path}: does not fit the network ({str(exc).splitlines()[0]})") from exc


class _Adopted(nn.Module):
    """The source network's first output, through the contract's softmax or sigmoid when it gives logits."""

    def __init__(self, network: nn.Module, squash: str | None) -> None:
        super().__init__()
        self.network, self.squash = network, squash

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        output = self.network(image)
        if isinstance(output, (tuple, list)):
            output = output[0]
        if self.squash == "softmax":
            return torch.softmax(output, dim=1)
        return torch.sigmoid(output) if self.squash == "sigmoid" else output


def _from_torch(module: nn.Module, spec: AdoptSpec) -> tuple[Any, Callable[[np.ndarray], np.ndarray]]:
    """ONNX from a PyTorch network: torch.export for modules; a scripted one goes through the TorchScript
    exporter alone (it cannot be traced inside a wrapper) and gets its softmax as an ONNX node."""
    wrapped = _Adopted(module, spec.contract.outputs if spec.source_outputs == "logits" else None).eval()
    example = torch.zeros(2, spec.contract.channels, *spec.contract.input_size)
    scripted = isinstance(module, torch.jit.ScriptModule)
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(scratch) / "adopted.onnx"
        try:
            if scripted:
                torch.onnx.export(module, (example,), str(raw), input_names=[INPUT_NAME], output_names=["scores"],
                                  opset_version=OPSET, dynamo=False,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, "scores": {0: "batch"}})
            else:
                torch.onnx.export(wrapped, (example,), str(raw), input_names=[INPUT_NAME],
                                  output_names=[PROBABILITIES], opset_version=OPSET, dynamo=True,
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                                  external_data=False, verbose=False)
        except Exception as exc:
            raise CxrEdgeError(f"the network does not run on the contract's input "
                               f"{(spec.contract.channels, *spec.contract.input_size)}: "
                               f"{str(exc).strip().splitlines()[-1][:200]}") from exc
        proto = _from_onnx(raw, spec)[0] if scripted else _load_onnx(raw)

    def reference(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return wrapped(torch.from_numpy(batch)).numpy()
    return proto, reference


def _load_onnx(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _from_onnx(path: Path, spec: AdoptSpec) -> tuple[Any, Callable[[np.ndarray], np.ndarray]]:
    """The source graph with its one input named ``image`` and its first output ``probabilities`` (through a
    softmax for logits); the reference is ONNX Runtime on the untouched source file."""
    import onnx
    import onnxruntime as ort

    try:
        proto = onnx.load(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CxrEdgeError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from exc
    graph = proto.graph
    initialisers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise CxrEdgeError(f"{path}: a classifier takes one image input; this model takes {len(inputs)}")
    _rename(graph, inputs[0].name, INPUT_NAME)
    source_output = graph.output[0].name
    if spec.source_outputs == "logits":
        _rename(graph, source_output, "logits")
        squash = onnx.helper.make_node("Sigmoid", ["logits"], [PROBABILITIES]) if spec.contract.multi_label \
            else onnx.helper.make_node("Softmax", ["logits"], [PROBABILITIES], axis=1)
        graph.node.append(squash)
        graph.output[0].name = PROBABILITIES
    else:
        _rename(graph, source_output, PROBABILITIES)
    del graph.output[1:]
    source_input = session.get_inputs()[0].name

    def reference(batch: np.ndarray) -> np.ndarray:
        scores = session.run([session.get_outputs()[0].name], {source_input: batch})[0]
        if spec.source_outputs == "probabilities":
            return scores
        if spec.contract.multi_label:
            return 1 / (1 + np.exp(-scores.astype(np.float64)))
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return proto, reference


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename one value everywhere in a graph: its producer, its consumers, and the graph's inputs and outputs."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _check_parity(source: str, path: Path, contract: Contract,
                  reference: Callable[[np.ndarray], np.ndarray]) -> tuple[int, float, float]:
    """Largest probability difference of the written file against the source, on ONNX Runtime and OpenVINO."""
    import onnxruntime as ort
    import openvino as ov

    rng = np.random.default_rng(0)
    batch = stack([preprocess(rng.random(contract.input_size, dtype=np.float32), contract) for _ in range(4)])
    try:
        expected = reference(batch)
    except Exception as exc:
        raise CxrEdgeError(f"{source}: does not run on the contract's input {batch.shape[1:]}: "
                           f"{str(exc).strip().splitlines()[0][:200]}") from exc
    if expected.ndim != 2 or expected.shape[1] != contract.num_classes:
        raise CxrEdgeError(f"{source}: outputs {expected.shape[1:] if expected.ndim > 1 else expected.shape} "
                           f"scores per image but the contract names {contract.num_classes} classes "
                           f"({', '.join(contract.class_names)})")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    from_ort = session.run([PROBABILITIES], {INPUT_NAME: batch})[0]
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    from_ov = compiled({INPUT_NAME: batch})[compiled.output(PROBABILITIES)]
    diff_ort, diff_ov = (float(np.abs(got - expected).max()) for got in (from_ort, from_ov))
    if max(diff_ort, diff_ov) > PARITY_TOLERANCE:
        raise CxrEdgeError(f"{path}: the adopted model disagrees with its source (max |probability difference| "
                           f"{diff_ort:.2e} on ONNX Runtime, {diff_ov:.2e} on OpenVINO; allowed {PARITY_TOLERANCE})")
    sums = expected.sum(axis=1)
    if contract.multi_label:
        if not np.all(np.isfinite(expected)) or expected.min() < 0 or expected.max() > 1:
            raise CxrEdgeError(f"{source}: its outputs are not probabilities (range {expected.min():.3g}-"
                               f"{expected.max():.3g}); say \"source_outputs\": \"logits\" in the contract")
    elif not np.all(np.isfinite(expected)) or np.abs(sums - 1).max() > 1e-3:
        raise CxrEdgeError(f"{source}: its outputs are not probabilities (rows sum to {sums.min():.3g}-"
                           f"{sums.max():.3g}); say \"source_outputs\": \"logits\" in the contract")
    return len(batch), diff_ort, diff_ov


def _provenance(source: str, weights: str | Path | None) -> dict[str, Any]:
    path = Path(source)
    return {"adopted": {"source": source, "source_sha256": file_sha256(path) if path.is_file() else None,
                        "weights_sha256": file_sha256(Path(weights)) if weights else None,
                        "gate": "none: adopted without validation films"},
            "exported": datetime.now(UTC).isoformat(timespec="seconds"),
            "exporter": {"package_version": package_version(), "git_commit": git_commit(),
                         "torch": str(torch.__version__), "opset": OPSET}}
