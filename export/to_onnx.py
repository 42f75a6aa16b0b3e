"""Checkpoint -> ONNX model that carries its own preprocessing contract, activation maps and gate.

The graph takes ``image`` (N x C x H x W, already preprocessed) and returns ``probabilities`` (N x classes,
softmax of the logits divided by the fitted temperature), ``cam`` (N x classes x h x w: the last feature map
projected by the classifier weights, so the runtime can draw heatmaps without torch) and ``features`` (N x F: the
pooled features the classifier reads); a checkpoint with a fitted gate adds ``gate_score`` (N) and
``orientation`` (N x 5), computed by `reliability.GateHead` from the same features, at a cost of a few small
matrix products. The gate's thresholds and the temperature go into the metadata (`runtime.gate.GatePolicy`).
H and W are fixed by the contract; only the batch axis is dynamic, which lets the exporter fold TF-style "same"
padding into constants instead of leaving shape arithmetic in the graph.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runtime.errors import CxrEdgeError
from ..runtime.model.contract import Contract
from ..runtime.model.gate import GatePolicy
from ..runtime.model.model_file import (
    ARCHITECTURE_KEY,
    CAM,
    FEATURES,
    GATE_SCORE,
    INPUT_NAME,
    ORIENTATION,
    PROBABILITIES,
    PROVENANCE_KEY,
    file_sha256,
)
from ..runtime.model.preprocess import load_for_contract, preprocess, stack
from .provenance import git_commit, package_version, set_onnx_metadata
from .reliability import GateHead, mid_statistics
from .train import load_checkpoint
from .zoo import CamClassifier, arch_spec, build_model

__all__ = ["export_onnx", "ExportReport", "OPSET", "PARITY_TOLERANCE", "model_from_checkpoint", "parity_images"]

OPSET = 18
PARITY_TOLERANCE = 1e-4
"""Largest allowed |probability difference| between the ONNX model and PyTorch on the same inputs."""


class _Exported(nn.Module):
    """The graph that ships: probabilities, activation maps, features and (with a gate) its two outputs."""

    def __init__(self, model: CamClassifier, arch: str, temperature: float = 1.0, gate: GateHead | None = None) -> None:
        super().__init__()
        self.first, self.second = arch_spec(arch).split(model)
        self.classifier = model.classifier
        self.temperature = temperature
        self.gate = gate

    @property
    def output_names(self) -> list[str]:
        return [PROBABILITIES, CAM, FEATURES] + ([GATE_SCORE, ORIENTATION] if self.gate is not None else [])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mid = self.first(image)
        fmap = self.second(mid)
        pooled = fmap.mean(dim=(2, 3))
        weight, bias = self.classifier.weight, self.classifier.bias
        cam = torch.einsum("kc,nchw->nkhw", weight, fmap) + bias[None, :, None, None]
        probabilities = (self.classifier(pooled) / self.temperature).softmax(dim=1)
        if self.gate is None:
            return probabilities, cam, pooled
        return probabilities, cam, pooled, *self.gate(mid_statistics(mid), pooled)


@dataclass
class ExportReport:
    """What export checked: parity with PyTorch (ONNX Runtime and OpenVINO) on real or synthetic inputs."""

    path: Path
    images: int
    real_images: bool
    max_diff_ort: float
    max_diff_openvino: float
    metadata: dict[str, str]


def parity_images(data_dir: Path | Sequence[Path], seed: int = 0) -> list[Path]:
    """One held-out image per class of a labelled folder (the 20 % validation part of a seeded split), so that
    the parity check sees real X-rays of every class rather than synthetic noise."""
    from ..runtime.evaluation.dataset import scan_dataset
    from .data import stratified_split

    _, val = stratified_split(scan_dataset(data_dir).samples, 0.2, seed)  # every label, coarse ones too
    return [next(s.path for s in val if s.label == label) for label in sorted({s.label for s in val})]


def model_from_checkpoint(checkpoint: dict) -> CamClassifier:
    """Rebuild the trained network of a loaded checkpoint, in eval mode."""
    model, _ = build_model(checkpoint["arch"], checkpoint["contract"].num_classes, pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def export_onnx(checkpoint_path: str | Path, out_path: str | Path, *,
                check_images: Sequence[Path] = ()) -> ExportReport:
    """Export a training checkpoint to ONNX with its contract and provenance, then prove the file right.

    Args:
        checkpoint_path: ``checkpoint.pt`` written by `cxr-edge train`.
        out_path: the ``.onnx`` file to write (refused if it exists).
        check_images: real images for the parity check (synthetic inputs are used when none are given).

    Raises:
        CxrEdgeError: the output exists, or a check fails (checker, parity, OpenVINO compilation).
    """
    import onnx

    out_path = Path(out_path)
    if out_path.exists():
        raise CxrEdgeError(f"{out_path} already exists; choose another output file")
    checkpoint = load_checkpoint(checkpoint_path)
    contract: Contract = checkpoint["contract"]
    reliability = checkpoint.get("reliability")
    policy = None
    if reliability:
        fitted = reliability["policy"]
        policy = GatePolicy(gate_threshold=fitted["gate_threshold"], upright_min=fitted["upright_min"],
                            orientations=tuple(fitted["orientations"]), abstain_below=fitted["abstain_below"],
                            temperature=fitted["temperature"], populations=checkpoint.get("populations", {}),
                            fitted_on=fitted["fitted_on"], validation_images=fitted["validation_images"],
                            abstain_on=fitted.get("abstain_on", "label"))
    model = _Exported(model_from_checkpoint(checkpoint), checkpoint["arch"], policy.temperature if policy else 1.0,
                      GateHead(reliability["gate"]) if reliability else None).eval()
    example = torch.zeros(2, contract.channels, *contract.input_size)  # batch 2: a batch of 1 would be specialised
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(scratch) / "model.onnx"
        torch.onnx.export(model, (example,), str(raw), input_names=[INPUT_NAME], output_names=model.output_names,
                          dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=1024)}},
                          opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
        proto = onnx.load(str(raw))
    metadata = contract.to_metadata() | {
        ARCHITECTURE_KEY: checkpoint["arch"],
        PROVENANCE_KEY: json.dumps(_provenance(checkpoint, Path(checkpoint_path)), sort_keys=True),
    } | (policy.to_metadata() if policy else {})
    set_onnx_metadata(proto, metadata)
    proto.producer_name = "cxr-edge"
    proto.producer_version = package_version()
    onnx.checker.check_model(proto, full_check=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out_path))
    try:
        report = _check_parity(model, out_path, contract, check_images)
    except Exception:
        out_path.unlink(missing_ok=True)  # never leave a file that failed its checks
        raise
    report.metadata = metadata
    return report


def _provenance(checkpoint: dict, checkpoint_path: Path) -> dict:
    trained = checkpoint["provenance"]
    metrics = checkpoint["metrics"]
    return {
        "training": trained,
        "validation": {"accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"),
                       "per_class": metrics.get("per_class")} if metrics else None,
        "checkpoint_sha256": file_sha256(checkpoint_path),
        "exported": datetime.now(UTC).isoformat(timespec="seconds"),
        "exporter": {"package_version": package_version(), "git_commit": git_commit(),
                     "torch": str(torch.__version__), "opset": OPSET},
    }


def _check_parity(model: nn.Module, path: Path, contract: Contract, images: Sequence[Path]) -> ExportReport:
    """Max |probability difference| against PyTorch on ONNX Runtime and on OpenVINO (which must compile it)."""
    import onnxruntime as ort
    import openvino as ov

    if images:
        batch = stack([preprocess(load_for_contract(p, contract).pixels, contract) for p in images])
    else:
        rng = np.random.default_rng(0)
        batch = stack([preprocess(rng.random(contract.input_size, dtype=np.float32), contract) for _ in range(4)])
    names = model.output_names
    with torch.inference_mode():
        expected = dict(zip(names, (t.numpy() for t in model(torch.from_numpy(batch))), strict=True))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    from_ort = dict(zip(names, session.run(names, {INPUT_NAME: batch}), strict=True))
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled({INPUT_NAME: batch})
    from_ov = {name: result[compiled.output(name)] for name in names}
    diff_ort = float(np.abs(from_ort[PROBABILITIES] - expected[PROBABILITIES]).max())
    diff_ov = float(np.abs(from_ov[PROBABILITIES] - expected[PROBABILITIES]).max())
    if max(diff_ort, diff_ov) > PARITY_TOLERANCE:
        raise CxrEdgeError(f"{path}: the exported model disagrees with PyTorch (max |probability difference| "
                           f"{diff_ort:.2e} on ONNX Runtime, {diff_ov:.2e} on OpenVINO; allowed {PARITY_TOLERANCE})")
    for name in names[1:]:  # the other outputs, relative to their own size
        scale = float(np.abs(expected[name]).max()) or 1.0
        worst = max(float(np.abs(got[name] - expected[name]).max()) for got in (from_ort, from_ov)) / scale
        if worst > 1e-3:
            raise CxrEdgeError(f"{path}: the exported model's {name!r} output disagrees with PyTorch (largest "
                               f"difference {worst:.1e} of its range)")
    return ExportReport(path, len(batch), bool(images), diff_ort, diff_ov, {})
