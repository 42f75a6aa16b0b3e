"""Export to ONNX and INT8 quantisation on a tiny but real EfficientNet-Lite0 (64 px, one epoch)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from cxr_edge.export.calibration import CalibrationError, read_manifest, resolve_calibration, write_manifest
from cxr_edge.export.config import TrainConfig
from cxr_edge.export.quantize import compare_models, quantize
from cxr_edge.export.to_onnx import export_onnx
from cxr_edge.export.train import load_checkpoint, train
from cxr_edge.runtime.errors import CxrEdgeError
from cxr_edge.runtime.evaluation.dataset import scan_dataset
from cxr_edge.runtime.model.classes import DEFAULT_CLASSES as CLASS_NAMES
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.contract import Contract
from cxr_edge.runtime.model.gate import GatePolicy
from cxr_edge.runtime.model.model_file import ARCHITECTURE_KEY, PROVENANCE_KEY, QUANTIZATION_KEY, file_sha256
from cxr_edge.runtime.model.preprocess import to_input

pytestmark = pytest.mark.slow  # trains or exports real networks


@pytest.fixture(scope="module")
def exported(small_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    train(TrainConfig(epochs=1, batch_size=8, image_size=64, val_fraction=0.25, threads=2), small_dataset,
          folder / "run")
    images = [s.path for s in scan_dataset(small_dataset).samples][::6]
    report = export_onnx(folder / "run" / "checkpoint.pt", folder / "model.onnx", check_images=images)
    return folder, report


def test_export_matches_pytorch_and_carries_contract_and_provenance(exported):
    folder, report = exported
    assert report.real_images and report.images == 4
    assert report.max_diff_ort <= 1e-4 and report.max_diff_openvino <= 1e-4
    proto = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["probabilities", "cam", "features", "gate_score", "orientation"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis
    metadata = {p.key: p.value for p in proto.metadata_props}
    checkpoint = load_checkpoint(folder / "run" / "checkpoint.pt")
    assert Contract.from_metadata(metadata) == checkpoint["contract"]
    assert metadata[ARCHITECTURE_KEY] == "efficientnet_lite0"
    provenance = json.loads(metadata[PROVENANCE_KEY])
    assert provenance["training"]["data_manifest_hash"] == checkpoint["provenance"]["data_manifest_hash"]
    assert provenance["training"]["seed"] == 0 and "git_commit" in provenance["exporter"]
    assert set(provenance["validation"]) == {"accuracy", "macro_f1", "per_class"}
    policy = GatePolicy.from_metadata(metadata)
    fitted = checkpoint["reliability"]["policy"]
    assert policy.gate_threshold == fitted["gate_threshold"] and policy.temperature == fitted["temperature"]
    assert policy.populations == checkpoint["populations"] and policy.orientations[0] == "upright"
    assert (policy.abstain_below, policy.abstain_on) == (fitted["abstain_below"], "finding")  # as it was fitted


def test_the_gate_in_the_graph_is_the_gate_that_was_fitted(exported, small_dataset):
    """The exported graph's gate score and orientation equal the build side's GateHead on the same images, and
    the probabilities carry the fitted temperature."""
    import torch

    from cxr_edge.export.reliability import GateHead, describe
    from cxr_edge.export.to_onnx import model_from_checkpoint
    from cxr_edge.runtime.model.preprocess import load_many

    folder, _ = exported
    checkpoint = load_checkpoint(folder / "run" / "checkpoint.pt")
    contract = checkpoint["contract"]
    paths = [s.path for s in scan_dataset(small_dataset).samples][::4]
    images, _, _ = load_many(paths, contract)
    described = describe(model_from_checkpoint(checkpoint), "efficientnet_lite0", contract, images)
    with torch.inference_mode():
        score, orientation = GateHead(checkpoint["reliability"]["gate"])(
            torch.from_numpy(described["mid"]), torch.from_numpy(described["final"]))
    logits = described["logits"] / checkpoint["reliability"]["policy"]["temperature"]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    for engine in ("ort", "openvino"):
        classifier = Classifier.open(folder / "model.onnx", backend=engine)
        outputs = classifier.run(to_input(images, contract))
        np.testing.assert_allclose(outputs["gate_score"], score.numpy(), rtol=1e-3)
        np.testing.assert_allclose(outputs["orientation"], orientation.numpy(), atol=1e-4)
        np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-4)


def test_exported_model_runs_on_both_engines_with_cams(exported, small_dataset):
    folder, _ = exported
    images = [s.path for s in scan_dataset(small_dataset).samples][:3]
    ort_results = Classifier.open(folder / "model.onnx", backend="ort").predict(images, cam=True)
    ov_results = Classifier.open(folder / "model.onnx", backend="openvino").predict(images, cam=True)
    for a, b in zip(ort_results, ov_results, strict=True):
        assert a.cam.shape == (2, 2)  # 64 px / 32
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) <= 1e-4


def test_export_never_overwrites(exported):
    folder, _ = exported
    with pytest.raises(CxrEdgeError, match="already exists"):
        export_onnx(folder / "run" / "checkpoint.pt", folder / "model.onnx")


def test_calibration_manifest_round_trip_and_hash_mismatch(small_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    dataset = scan_dataset(data)
    manifest = tmp_path / "calib.tsv"
    chosen = write_manifest(dataset, manifest, per_class=2, seed=3)
    assert len(chosen) == 8 and sorted({s.label for s in chosen}) == sorted(CLASS_NAMES)
    text = manifest.read_text()
    assert text.startswith("# cxr-edge calibration manifest v2") and str(data) not in text  # relative paths
    assert [(s.path, s.label) for s in read_manifest(manifest, data)] == [(s.path, s.label) for s in chosen]
    assert resolve_calibration(None, manifest, data) == [s.path for s in chosen]
    v1 = tmp_path / "v1.tsv"  # a single-root manifest of the first release still resolves
    v1.write_text("# cxr-edge calibration manifest v1\nclass\tfile\tsha256\n" + "".join(
        f"{s.label}\t{s.path.relative_to(data).as_posix()}\t{file_sha256(s.path)}\n" for s in chosen))
    assert [s.path for s in read_manifest(v1, data)] == [s.path for s in chosen]
    elsewhere = tmp_path / "other" / "data"
    shutil.copytree(data, elsewhere)
    with pytest.raises(CalibrationError, match="no data folder named 'data'"):
        read_manifest(manifest, tmp_path / "other")
    with open(chosen[0].path, "ab") as handle:
        handle.write(b"\0")
    (chosen[1].path).unlink()
    with pytest.raises(CalibrationError, match="SHA-256 mismatch") as caught:
        read_manifest(manifest, data)
    assert "is missing" in str(caught.value)
    with pytest.raises(CalibrationError, match="exactly one calibration source"):
        resolve_calibration(data, manifest, data)
    with pytest.raises(CalibrationError, match="already exists"):
        write_manifest(dataset, manifest, per_class=1)


@pytest.mark.parametrize("backend, suffix", [("ort", ".onnx"), ("openvino", ".xml")])
def test_quantisation_keeps_the_contract_and_reports_both_models(exported, small_dataset, tmp_path, backend, suffix):
    folder, _ = exported
    dataset = scan_dataset(small_dataset)
    out = tmp_path / f"int8{suffix}"
    report = quantize(folder / "model.onnx", out, calibration=[s.path for s in dataset.samples], backend=backend,
                      labelled=dataset.samples)
    assert out.exists() and (backend == "ort" or out.with_suffix(".bin").exists())
    int8 = Classifier.open(out, backend=backend)
    assert int8.contract == Classifier.open(folder / "model.onnx", backend="ort").contract
    assert QUANTIZATION_KEY in int8.metadata and PROVENANCE_KEY in int8.metadata
    comparison = report.comparison
    paths = [s.path for s in dataset.samples]
    fp32_labels = [p.top for p in Classifier.open(folder / "model.onnx", backend=backend).predict(paths)]
    int8_labels = [p.top for p in int8.predict(paths)]
    truth = [s.label for s in dataset.samples]
    assert comparison["images"] == len(dataset.samples)
    assert comparison["agreement"] == pytest.approx(np.mean(np.equal(fp32_labels, int8_labels)))
    assert comparison["int8"]["accuracy"] == pytest.approx(np.mean(np.equal(int8_labels, truth)))
    assert comparison["fp32"]["accuracy"] == pytest.approx(np.mean(np.equal(fp32_labels, truth)))
    assert comparison["size_mb"]["int8"] < comparison["size_mb"]["fp32"]
    assert comparison["speedup"] == pytest.approx(comparison["latency_ms"]["fp32"] / comparison["latency_ms"]["int8"])
    with pytest.raises(CxrEdgeError, match="already exists"):
        quantize(folder / "model.onnx", out, calibration=[s.path for s in dataset.samples], backend=backend)
    if backend == "ort":
        with pytest.raises(CxrEdgeError, match="already quantised"):
            quantize(out, tmp_path / "again.onnx", calibration=[s.path for s in dataset.samples])


def test_agreement_is_exact_for_identical_models(exported):
    folder, _ = exported
    inputs = np.random.default_rng(0).normal(size=(6, 1, 64, 64)).astype(np.float32)
    labels = np.arange(6) % 4
    report = compare_models(folder / "model.onnx", folder / "model.onnx", "ort", inputs, labels, runs=3)
    assert report["agreement"] == 1.0 and report["fp32"] == report["int8"]


def test_cli_quantize_with_a_manifest(exported, small_dataset, tmp_path):
    folder, _ = exported
    manifest = tmp_path / "calib.tsv"
    write_manifest(scan_dataset(small_dataset), manifest, per_class=3)
    out = tmp_path / "cli-int8.onnx"
    result = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "quantize", str(folder / "model.onnx"), "-o",
                             str(out), "--calib-manifest", str(manifest), "--data", str(small_dataset), "--val",
                             str(small_dataset)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "agreement" in result.stdout and "latency p50" in result.stdout
    report = json.loads((tmp_path / "cli-int8.onnx.report.json").read_text())
    assert report["calibration_images"] == 12 and report["comparison"]["images"] == 24
