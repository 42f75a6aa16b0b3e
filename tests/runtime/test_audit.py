"""The shortcut audit on a real (tiny) model over labelled folders with two sources per class."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cxr_edge.runtime.errors import CxrEdgeError
from cxr_edge.runtime.evaluation.audit import LUNG_BOX, STRESSES, auroc, run_audit
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.preprocess import load_many, to_input
from tests.factories import tiny_onnx


def test_auroc_against_hand_counted_cases():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    assert auroc(np.array([1, 2, 3, 4]), np.array([0, 0, 1, 1], bool)) == 1.0
    assert auroc(np.array([1, 1, 1, 1]), np.array([0, 1, 0, 1], bool)) == 0.5  # ties count half
    assert np.isnan(auroc(np.array([1, 2]), np.array([1, 1], bool)))


@pytest.fixture()
def two_sources(small_dataset, tmp_path):
    """The small copy of the shared data, each class split into two prefixed sources."""
    root = tmp_path / "data"
    for folder in small_dataset.iterdir():
        (root / folder.name).mkdir(parents=True)
        for i, image in enumerate(sorted(folder.iterdir())):
            shutil.copy(image, root / folder.name / f"{'site-a' if i % 2 else 'site-b'}__{image.name}")
    return root


def test_the_audit_measures_every_source(tmp_path, two_sources):
    model = tiny_onnx(tmp_path / "tiny.onnx", size=64, features=True)
    result = run_audit(Classifier.open(model, backend="ort"), [two_sources])
    assert result["images"] == 24 and result["unreadable"] == []
    assert set(result["by_source"]) == {"site-a", "site-b"}
    for row in result["by_source"].values():
        assert row["images"] == 12
        assert set(row["label_holds_under"]) == set(STRESSES)
        assert sum(row["called"]["as given"].values()) == 12
    classifier = Classifier.open(model, backend="ort")  # the masking probe, recomputed by hand
    images, _, _ = load_many(sorted(p for p in two_sources.rglob("*.*")), classifier.contract)
    masked = images.copy()
    top, bottom, left, right = (np.array(LUNG_BOX) * 64).astype(int)
    masked[:, top:bottom, left:right] = 0
    plain, blacked = (classifier.run(to_input(x, classifier.contract))["probabilities"].argmax(1)
                      for x in (images, masked))
    assert result["label_survives_masking"] == pytest.approx(np.mean(plain == blacked))
    assert set(result["source_probe_auroc"]) == {"normal", "covid19", "pneumonia"}  # within each finding
    for sources in result["source_probe_auroc"].values():
        assert set(sources) == {"site-a", "site-b"} and all(0 <= r["auroc"] <= 1 for r in sources.values())


def test_the_audit_refuses_a_model_without_features(tmp_path, two_sources):
    with pytest.raises(CxrEdgeError, match="the audit needs the model outputs features"):
        run_audit(Classifier.open(tiny_onnx(tmp_path / "bare.onnx", size=64), backend="ort"), [two_sources])


def test_cli_audit_writes_json(tmp_path, two_sources):
    model = tiny_onnx(tmp_path / "tiny.onnx", size=64, features=True)
    result = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "audit", "--data", str(two_sources), "--model",
                             str(model), "--json", str(tmp_path / "audit.json")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "site-a" in result.stdout and "AUROC" in result.stdout
    assert json.loads((tmp_path / "audit.json").read_text())["images"] == 24
