"""The site acceptance check: the same accuracy as `bench --data`, a clear refusal without labels, a site model
written beside (never over) the model, and no patient identifier in its report."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cxr_edge.runtime.evaluation.bench import _labelled_inputs, label_figures
from cxr_edge.runtime.evaluation.validate import validate_site
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.model_file import PROBABILITIES
from tests.factories import PATIENT_ID, PATIENT_NAME, gradient, write_dicom


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr_edge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_validate_reproduces_the_accuracy_bench_reports(small_dataset):
    classifier = Classifier.open(None, backend="ort", threads=2)
    report = validate_site(classifier, [small_dataset])
    inputs, _, samples = _labelled_inputs(small_dataset, classifier.contract)  # what bench --data reads
    probabilities = np.concatenate([classifier.backend.run(inputs[i:i + 16], (PROBABILITIES,))[PROBABILITIES]
                                    for i in range(0, len(inputs), 16)])
    bench = label_figures(samples, probabilities, classifier.contract)
    assert report["images"] == bench["images"] == 24
    assert report["figures"]["accuracy"] == pytest.approx(bench["accuracy"], abs=1e-9)
    assert report["figures"]["findings"]["confusion_matrix"] == bench["findings"]["confusion_matrix"]
    calibration = report["calibration"]
    assert 0.1 <= calibration["scale"] <= 10 and calibration["after"]["nll"] <= calibration["before"]["nll"] + 1e-9


def test_a_folder_without_labels_is_refused_in_one_line(tmp_path):
    unlabelled = tmp_path / "films"
    unlabelled.mkdir()
    write_dicom(unlabelled / "a.dcm", gradient(200, 160, top=4095), bits_stored=12)
    result = _cli("validate", "--data", unlabelled)
    assert result.returncode == 1, result.stderr
    assert "no class folders" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_site_model_is_a_copy_and_the_report_names_no_patient(small_dataset, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(small_dataset, site)
    film = np.rint(np.clip(gradient(400, 360) / 255.0, 0, 1) * 4095).astype(np.uint16)
    write_dicom(site / "normal" / "patient.dcm", film, bits_stored=12)
    shipped = Classifier.open(None, backend="ort").path
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    out, report = tmp_path / "site-model.xml", tmp_path / "report.json"
    result = _cli("validate", "--data", site, "--json", report, "--markdown", tmp_path / "report.md",
                  "--write-site-model", out)
    assert result.returncode in (0, 3), result.stderr
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before and out.is_file()
    figures = json.loads(report.read_text())
    site_model = Classifier.open(out, backend="openvino")
    assert site_model.policy.site_scale == pytest.approx(figures["calibration"]["scale"])
    for text in (report.read_text(), (tmp_path / "report.md").read_text(), result.stdout, result.stderr):
        assert PATIENT_ID not in text and PATIENT_NAME.split("^")[0] not in text
    again = _cli("validate", "--data", site, "--write-site-model", out)
    assert again.returncode == 1 and "never replaces" in again.stderr
