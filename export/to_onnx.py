"""Checkpoint -> ONNX model that carries its own preprocessing contract and computes activation maps.

The graph takes ``image`` (N x C x H x W, already preprocessed) and returns ``probabilities`` (N x classes,
softmax) and ``cam`` (N x classes x h x w: the last feature map projected by the classifier weights), so the
runtime can draw heatmaps without torch. H and W are fixed by the contract; only the batch axis is dynamic, which
lets the exporter fold TF-style "same" padding into constants instead of leaving shape arithmetic in the graph.
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

from ..runtime.contract import Contract
from ..runtime.errors import CxrEdgeError
from ..runtime.model_file import (
    ARCHITECTURE_KEY,
    CAM,
    INPUT_NAME,
    PROBABILITIES,
    PROVENANCE_KEY,
    file_sha256,
)
from ..runtime.preprocess import load_for_contract, preprocess, stack
from .provenance import git_commit, package_version, set_onnx_metadata
from .train import load_checkpoint
from .zoo import CamClassifier, build_model

__all__ = ["export_onnx", "ExportReport", "OPSET", "PARITY_TOLERANCE", "model_from_checkpoint", "parity_images"]

OPSET = 18
PARITY_TOLERANCE = 1e-4
"""Largest allowed |probability difference| between the ONNX model and PyTorch on the same inputs."""


class _Exported(nn.Module):
    """The graph that ships: probabilities and activation maps from one preprocessed batch."""

    def __init__(self, model: CamClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, cam = self.model.forward_with_cam(image)
        return logits.softmax(dim=1), cam


@dataclass
class ExportReport:
    """What export checked: parity with PyTorch (ONNX Runtime and OpenVINO) on real or synthetic inputs."""

    path: Path
    images: int
    real_images: bool
    max_diff_ort: float
    max_diff_openvino: float
    metadata: dict[str, str]


def parity_images(data_dir: Path, seed: int = 0) -> list[Path]:
    """One held-out image per class of a labelled folder (the 20 % validation part of a seeded split), so that
    the parity check sees real X-rays of every class rather than synthetic noise."""
    from ..runtime.dataset import scan_dataset
    from .data import stratified_split

    _, val = stratified_split(scan_dataset(data_dir).samples, 0.2, seed)
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
    model = _Exported(model_from_checkpoint(checkpoint)).eval()
    example = torch.zeros(2, contract.channels, *contract.input_size)  # batch 2: a batch of 1 would be specialised
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(scratch) / "model.onnx"
        torch.onnx.export(model, (example,), str(raw), input_names=[INPUT_NAME], output_names=[PROBABILITIES, CAM],
                          dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=1024)}},
                          opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
        proto = onnx.load(str(raw))
    metadata = contract.to_metadata() | {
        ARCHITECTURE_KEY: checkpoint["arch"],
        PROVENANCE_KEY: json.dumps(_provenance(checkpoint, Path(checkpoint_path)), sort_keys=True),
    }
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
    with torch.inference_mode():
        expected = model(torch.from_numpy(batch))[0].numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    from_ort = session.run([PROBABILITIES], {INPUT_NAME: batch})[0]
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    from_ov = compiled({INPUT_NAME: batch})[compiled.output(PROBABILITIES)]
    diff_ort = float(np.abs(from_ort - expected).max())
    diff_ov = float(np.abs(from_ov - expected).max())
    if max(diff_ort, diff_ov) > PARITY_TOLERANCE:
        raise CxrEdgeError(f"{path}: the exported model disagrees with PyTorch (max |probability difference| "
                           f"{diff_ort:.2e} on ONNX Runtime, {diff_ov:.2e} on OpenVINO; allowed {PARITY_TOLERANCE})")
    return ExportReport(path, len(batch), bool(images), diff_ort, diff_ov, {})
