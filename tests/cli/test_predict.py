"""`cxr-edge predict` and `cxr-edge info` end to end, in subprocesses, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_edge.runtime.model.gate import NO_GATE
from tests.factories import CLASSES, PATIENT_ID, PATIENT_NAME, bad_corpus, gradient, tiny_onnx, write_dicom


def _run(*args: str, cache: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"CXR_EDGE_CACHE": str(cache), "COLUMNS": "220"} | (env or {})  # rich wraps at the width
    return subprocess.run([sys.executable, "-m", "cxr_edge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture()
def setup(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx", size=64)
    images = []
    for i in range(3):
        path = tmp_path / "in" / f"chest{i}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), np.roll(gradient(300, 240), 40 * i, axis=1))
        images.append(path)
    return model, images, tmp_path / "cache"


def test_jsonl_has_exactly_the_documented_keys_in_input_order(setup):
    model, images, cache = setup
    order = [images[2], images[0], images[1]]
    result = _run("predict", *order, "--model", model, "--format", "jsonl", "--backend", "ort", cache=cache)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in order]
    for record in records:
        assert list(record) == ["path", "label", "finding", "finding_probability", "probabilities", "latency_ms",
                                "error", "status", "gate", "warnings", "monitor"]
        assert list(record["monitor"]) == ["image", "model", "device"] and record["monitor"]["device"] is None
        assert list(record["monitor"]["image"]) == ["mean", "spread", "edges", "width", "height", "bits"]
        assert record["monitor"]["image"]["width"] == 240 and record["monitor"]["image"]["bits"] == 8
        assert record["label"] in CLASSES and record["error"] is None
        assert (record["status"], record["gate"], record["warnings"]) == ("classified", None, [NO_GATE])  # says so
        assert list(record["probabilities"]) == list(CLASSES)
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert list(record["latency_ms"]) == ["decode", "preprocess", "inference", "total"]


def test_bad_inputs_get_one_line_each_and_good_files_are_still_predicted(setup, tmp_path):
    model, images, cache = setup
    (tmp_path / "bad").mkdir()
    corpus = bad_corpus(tmp_path / "bad")
    corpus["directory"] = (corpus["directory"][0], "folder holds no image files")  # a folder argument is walked
    bad_paths = [path for path, _ in corpus.values()]
    inputs = [images[0], *bad_paths, images[1]]
    result = _run("predict", *inputs, "--model", model, "--format", "jsonl", cache=cache)
    assert result.returncode == 2, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in inputs]
    assert records[0]["label"] in CLASSES and records[-1]["label"] in CLASSES
    errors = [line for line in result.stderr.splitlines() if line.startswith("cxr-edge: error: ")]
    for (path, reason), record in zip(corpus.values(), records[1:-1], strict=True):
        assert record["label"] is None and record["probabilities"] is None and reason in record["error"]
        assert f"cxr-edge: error: {path}: {record['error']}" in errors
    assert len(errors) == len(bad_paths)
    assert "Traceback" not in result.stderr


def test_a_model_that_is_not_onnx_is_one_line_and_exit_1(setup, tmp_path):
    _, images, cache = setup
    fake = tmp_path / "model.onnx"
    fake.write_text("definitely not protobuf")
    result = _run("predict", images[0], "--model", fake, cache=cache)
    assert result.returncode == 1
    assert result.stderr.strip() == f"cxr-edge: error: {fake}: not an ONNX model (.onnx) or OpenVINO IR (.xml + .bin)"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08" + os.urandom(300))
    result = _run("predict", images[0], "--model", garbage, "--backend", "ort", cache=cache)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "ONNX Runtime cannot load it" in result.stderr


def test_usage_errors_exit_1(setup):
    model, _, cache = setup
    assert _run("predict", "--model", model, cache=cache).returncode == 1
    assert _run("predict", "x.png", "--format", "xml", cache=cache).returncode == 1


def test_cam_overlays_are_written_and_never_replace_an_input(setup):
    model, images, cache = setup
    folder = images[0].parent
    decoy = folder / "chest0.png.cam.png"  # an input that sits where the first overlay would go
    cv2.imwrite(str(decoy), gradient())
    before = decoy.read_bytes()
    result = _run("predict", images[0], images[1], decoy, "--model", model, "--cam-dir", folder, "--format", "jsonl",
                  cache=cache)
    assert result.returncode == 0, result.stderr
    assert decoy.read_bytes() == before
    first, second = folder / "chest0.png-1.cam.png", folder / "chest1.png.cam.png"
    for overlay, source in ((first, images[0]), (second, images[1])):
        picture = cv2.imread(str(overlay))
        film = cv2.imread(str(source)).shape[:2]  # the film at its resolution, with a band above and a scale beside
        assert picture is not None and picture.shape[0] > film[0] and picture.shape[1] > film[1]
        assert picture.std(axis=2).mean() > 5  # coloured heatmap, not a gray copy
    again = _run("predict", images[1], "--model", model, "--cam-dir", folder, cache=cache)
    assert again.returncode == 0 and (folder / "chest1.png-1.cam.png").exists()


@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv"])
def test_patient_identifiers_are_never_printed_unless_asked(setup, tmp_path, fmt):
    model, _, cache = setup
    dicom = write_dicom(tmp_path / "patient.dcm", gradient(200, 160, top=4095), bits_stored=12, modality="CT")
    hidden = _run("predict", dicom, "--model", model, "--format", fmt, cache=cache)
    assert hidden.returncode == 0, hidden.stderr
    assert "modality is CT" in (hidden.stdout if fmt == "table" else hidden.stderr)  # a warning, not a failure
    for text in (hidden.stdout, hidden.stderr):
        assert PATIENT_ID not in text and "Doe" not in text
    shown = _run("predict", dicom, "--model", model, "--format", fmt, "--show-phi", cache=cache)
    assert PATIENT_ID in shown.stdout and PATIENT_NAME.split("^")[0] in shown.stdout
    assert PATIENT_ID not in shown.stderr


def test_table_has_a_summary_with_the_budget_verdict(setup):
    model, images, cache = setup
    result = _run("predict", *images, "--model", model, "--format", "table", cache=cache)
    assert result.returncode == 0, result.stderr
    assert "3 images, 0 failed" in result.stdout and "under the 60 s budget" in result.stdout
    assert all(p.name in result.stdout for p in images)


def test_folder_argument_and_csv(setup):
    model, images, cache = setup
    result = _run("predict", images[0].parent, "--model", model, "--format", "csv", cache=cache)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.strip().splitlines()
    assert rows[0].startswith("path,label,finding,finding_probability,confidence,p_normal")
    assert [r.split(",")[0] for r in rows[1:]] == [str(p) for p in images]


def test_info_shows_contract_and_hashes(setup, tmp_path):
    model, _, cache = setup
    result = _run("info", model, "--json", cache=cache)
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    assert details["contract"]["class_names"] == list(CLASSES)
    import hashlib

    assert details["files"][str(model)]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    table = _run("info", model, cache=cache)
    assert table.returncode == 0 and f"class {CLASSES[0]}" in table.stdout and "input_size" in table.stdout
    bare = tiny_onnx(tmp_path / "bare.onnx", contract=False)
    refused = _run("info", bare, cache=cache)
    assert refused.returncode == 1 and "carries no cxr-edge preprocessing contract" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_the_shipped_int8_model_is_the_default(setup, data_dir):
    _, images, cache = setup
    film = sorted((data_dir / "train" / "normal").iterdir())[0]
    result = _run("predict", film, images[0], "--format", "jsonl", "--backend", "ort", cache=cache)
    assert result.returncode == 0, result.stderr
    chest, gradient_image = (json.loads(line) for line in result.stdout.splitlines())
    assert "cxr-edge-int8.onnx" in result.stderr and chest["label"] in CLASSES and chest["gate"] is not None
    assert gradient_image["status"] == "rejected" and gradient_image["label"] is None  # a drawing, not a film
    info = json.loads(_run("info", "--json", cache=cache).stdout)
    assert info["model"]["path"].endswith("cxr-edge-int8.onnx")
    assert info["model"]["architecture"] == "efficientnet_lite0"
    assert info["contract"]["input_size"] == [224, 224] and "training" in info["provenance"]
    assert info["contract"]["intensity"] == "equalize" and info["gate"]["gate_threshold"] > 0
    assert info["gate"]["populations"]["bacterial_pneumonia"] == ["child"]


@pytest.mark.parametrize("columns", [80, 100])
def test_an_80_column_table_still_names_every_file(setup, tmp_path, columns):
    model, images, cache = setup
    deep = tmp_path / "a-rather-long-folder-name" / "with" / "several" / "levels"
    deep.mkdir(parents=True)
    inputs = [deep / f"patient-{i:04d}-chest-pa.png" for i in range(3)]
    for source, target in zip(images, inputs, strict=True):
        target.write_bytes(source.read_bytes())
    result = _run("predict", *inputs, "--model", model, "--format", "table", cache=cache,
                  env={"COLUMNS": str(columns)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= columns
    for path in inputs:  # each row shows the file's whole name, never cut or folded away
        assert any(path.name in line and ("normal" in line or "covid19" in line or "pneumonia" in line)
                   for line in lines), (path.name, result.stdout)


def _gated(tmp_path: Path, **policy: object) -> Path:
    from cxr_edge.runtime.model.gate import GatePolicy

    tmp_path.mkdir(exist_ok=True)
    return tiny_onnx(tmp_path / "gated.onnx", size=64, extra_metadata=GatePolicy(**policy).to_metadata())


def test_strict_exits_3_when_any_image_is_uncertain_or_rejected(setup, tmp_path):
    _, images, cache = setup
    unsure = _gated(tmp_path, abstain_below=0.99)  # a tiny model is never that sure: every result is uncertain
    plain = _run("predict", *images, "--model", unsure, "--format", "jsonl", cache=cache)
    assert plain.returncode == 0, plain.stderr
    records = [json.loads(line) for line in plain.stdout.splitlines()]
    assert {r["status"] for r in records} == {"uncertain"} and all(r["label"] in CLASSES for r in records)
    assert all(r["warnings"][0].startswith("uncertain: the probability of ") for r in records)
    strict = _run("predict", *images, "--model", unsure, "--format", "jsonl", "--strict", cache=cache)
    assert strict.returncode == 3
    assert [(r["path"], r["status"]) for r in map(json.loads, strict.stdout.splitlines())] == [
        (r["path"], r["status"]) for r in records]
    sure = _run("predict", *images, "--model", _gated(tmp_path / "x", abstain_below=0.01), "--strict", cache=cache)
    assert sure.returncode == 0, sure.stderr
    broken = tmp_path / "broken.png"
    broken.write_text("no")
    failed = _run("predict", images[0], broken, "--model", unsure, "--strict", cache=cache)
    assert failed.returncode == 2  # a failure outranks a doubt


def test_a_rejected_dicom_keeps_no_label_and_the_table_says_why(setup, tmp_path):
    model, _, cache = setup
    hand = write_dicom(tmp_path / "hand.dcm", gradient(200, 160, top=4095), bits_stored=12, BodyPartExamined="HAND")
    lateral = write_dicom(tmp_path / "lateral.dcm", gradient(200, 160, top=4095), bits_stored=12, ViewPosition="LL")
    result = _run("predict", hand, lateral, "--model", model, "--format", "jsonl", cache=cache)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["status"], r["label"]) for r in records] == [("rejected", None), ("rejected", None)]
    assert records[0]["warnings"][0] == "rejected: the DICOM body part is HAND, not the chest"
    assert "lateral view" in records[1]["warnings"][0] and sum(records[1]["probabilities"].values()) > 0.99
    table = _run("predict", hand, "--model", model, "--format", "table", cache=cache)
    assert "rejected" in table.stdout and "body part is HAND" in table.stdout
    warned = _run("predict", hand, "--model", model, "--format", "jsonl", "--gate", "warn", cache=cache)
    record = json.loads(warned.stdout)
    assert record["status"] == "classified" and record["label"] in CLASSES
    assert "body part is HAND, not CHEST" in record["warnings"]


def test_gate_warn_strict_exits_3_when_the_gate_objects_to_a_photo(setup, tmp_path):
    """The shipped model's gate refuses a photograph; with --gate warn it keeps a label, and --strict still says
    that something was wrong with exit code 3."""
    from skimage.data import chelsea

    _, images, cache = setup
    photo = tmp_path / "cat.png"
    cv2.imwrite(str(photo), cv2.cvtColor(chelsea(), cv2.COLOR_RGB2BGR))
    warned = _run("predict", photo, "--gate", "warn", "--format", "jsonl", cache=cache)
    assert warned.returncode == 0, warned.stderr
    record = json.loads(warned.stdout)
    assert record["label"] is not None and any(w.startswith("gate: ") for w in record["warnings"])
    strict = _run("predict", photo, "--gate", "warn", "--strict", "--format", "jsonl", cache=cache)
    assert strict.returncode == 3, strict.stderr


def test_a_rejected_row_shows_no_probability_and_a_long_name_stays_on_one_line(setup, tmp_path):
    from skimage.data import chelsea

    _, images, cache = setup
    photo = tmp_path / "cat.png"
    cv2.imwrite(str(photo), cv2.cvtColor(chelsea(), cv2.COLOR_RGB2BGR))
    long_name = tmp_path / (("film-of-a-long-study-description-" * 4)[:116] + ".png")
    assert len(long_name.name) == 120
    long_name.write_bytes(images[0].read_bytes())
    table = _run("predict", photo, long_name, "--format", "table", cache=cache, env={"COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and all(len(line) <= 80 for line in table.stdout.splitlines())
    cat, film = rows
    assert "cat.png" in cat and "rejected" in cat
    assert [cell.strip() for cell in cat.split("│")][3] == "-"  # no probability for a refusal
    assert "film-of" in film and film.rstrip().endswith("│")
    record = json.loads(_run("predict", photo, "--format", "jsonl", cache=cache).stdout)
    assert record["status"] == "rejected" and record["finding"] is None and record["probabilities"]  # kept in jsonl
