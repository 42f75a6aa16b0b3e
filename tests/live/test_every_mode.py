"""One result pipeline: every output exists in every mode, and a model with classes of its own (three, none of them
cxr-edge's) goes through all of them with the names and codes its contract carries."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.coding import Code

from cxr_edge.runtime.live.dicom_listener import DicomListener
from cxr_edge.runtime.live.watch import FolderWatcher
from cxr_edge.runtime.model.classes import PRIVATE_SCHEME
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.outputs.steps import OutputOptions
from tests.factories import PATIENT_ID, PATIENT_NAME, dicom_dataset, gradient, tiny_onnx, write_dicom
from tests.live.test_dicom_listener import dcmtk
from tests.live.test_results_in_pacs import dciodvfy_errors, send
from tests.processes import run_cli

THREE = ("clear", "effusion", "nodule")
"""A model's own classes: no alias, no standard code, no finding of cxr-edge's vocabulary."""


@pytest.fixture()
def three(tmp_path: Path) -> Path:
    return tiny_onnx(tmp_path / "three.onnx", size=64, classes=THREE)


def _check_report(path: Path, record: dict, contract) -> None:
    dump = subprocess.run([dcmtk("dsrdump"), str(path)], capture_output=True, text=True)
    assert dump.returncode == 0 and not dump.stderr.strip(), dump.stderr
    assert dciodvfy_errors(path) == []
    (group,) = hd.sr.srread(path).content.get_image_measurement_groups()
    value, scheme, meaning = contract.code(record["finding"])
    assert group.finding_type == Code(value, scheme, meaning)
    measured = {m.name.meaning: m.value for m in group.get_measurements()}
    for name, p in record["probabilities"].items():
        assert abs(measured[f"Probability of {contract.display(name)}"] - p) < 1e-6


def _heard(out: Path, classifier: Classifier, outputs: OutputOptions) -> dict:
    """One film sent by C-STORE to a DICOM node writing into `out`; its record once the node is idle."""
    node = DicomListener(out, classifier, port=0, host="127.0.0.1", outputs=outputs)
    node.start()
    try:
        image = dicom_dataset(gradient(256, 256))
        send(node.port, image)
        assert node.wait_idle()
    finally:
        node.stop()
    return json.loads((out / "results" / f"{image.SOPInstanceUID}.json").read_text())


def _check_fhir(path: Path, record: dict, contract) -> None:
    from fhir.resources.bundle import Bundle

    text = path.read_text()
    observation = Bundle.model_validate_json(text).entry[1].resource
    assert observation.valueCodeableConcept.coding[0].code == contract.code(record["finding"])[0]
    assert PATIENT_ID not in text and PATIENT_NAME not in text


def test_watch_writes_a_coded_report_a_capture_and_fhir_for_a_dicom_input(tmp_path: Path) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    classifier = Classifier.open(tiny_onnx(tmp_path / "tiny.onnx", size=64), backend="ort")
    image = write_dicom(inbox / "chest.dcm", gradient(256, 256), StudyDescription="Chest PA")
    study = pydicom.dcmread(image).StudyInstanceUID
    options = OutputOptions(cam=True, sc=True, sr="tid1500", fhir=out / "fhir")
    FolderWatcher(inbox, out, classifier, outputs=options, settle_s=0.05).run(once=True)
    (record,) = (json.loads(p.read_text()) for p in (out / "results").glob("*.json"))
    assert record["status"] in ("classified", "uncertain") and record["finding"] is not None
    _check_report(out / record["sr"], record, classifier.contract)
    capture = pydicom.dcmread(out / record["sc"])
    assert capture.StudyInstanceUID == study and capture.BurnedInAnnotation == "YES"
    assert dciodvfy_errors(out / record["sc"]) == []
    _check_fhir(out / record["fhir"], record, classifier.contract)
    assert (out / record["cam"]).exists()


def test_predict_writes_reports_heatmaps_and_fhir_into_the_folders_given(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "tiny.onnx", size=64)
    dicom = write_dicom(tmp_path / "chest.dcm", gradient(256, 256))
    png = tmp_path / "film.png"
    png.write_bytes(_png())
    reports, fhir, cams = tmp_path / "sr", tmp_path / "fhir", tmp_path / "cam"
    result = run_cli("predict", dicom, png, "--model", model, "--format", "jsonl", "--sr", reports, "--fhir", fhir,
                     "--cam-dir", cams)
    assert result.returncode == 0, result.stderr
    by_name = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    dicom_record, png_record = by_name["chest.dcm"], by_name["film.png"]
    assert Path(dicom_record["sr"]) == reports / "chest.dcm.sr.dcm" and png_record["sr"] is None  # DICOM only
    contract = Classifier.open(model, backend="ort").contract
    _check_report(Path(dicom_record["sr"]), dicom_record, contract)
    for record in (dicom_record, png_record):
        _check_fhir(Path(record["fhir"]), record, contract)
        assert Path(record["cam"]).exists()
    again = run_cli("predict", dicom, "--model", model, "--format", "jsonl", "--sr", reports)
    assert json.loads(again.stdout)["sr"] == str(reports / "chest.dcm-1.sr.dcm")  # never replaced


def _png() -> bytes:
    import cv2

    return cv2.imencode(".png", gradient(200, 160))[1].tobytes()


def test_a_three_class_model_goes_through_every_output(tmp_path: Path, three: Path) -> None:
    classifier = Classifier.open(three, backend="ort")
    contract = classifier.contract
    assert contract.findings == () and contract.finding_names == THREE
    assert all(code[1] == PRIVATE_SCHEME for code in contract.codes)

    inbox, watched = tmp_path / "in", tmp_path / "watched"
    inbox.mkdir()
    write_dicom(inbox / "chest.dcm", gradient(256, 256))
    FolderWatcher(inbox, watched, classifier, outputs=OutputOptions(sc=True, sr="tid1500", fhir=watched / "fhir"),
                  settle_s=0.05).run(once=True)
    (record,) = (json.loads(p.read_text()) for p in (watched / "results").glob("*.json"))
    assert record["label"] in THREE and record["finding"] == record["label"]
    _check_report(watched / record["sr"], record, contract)
    _check_fhir(watched / record["fhir"], record, contract)

    heard = tmp_path / "heard"
    record = _heard(heard, classifier, OutputOptions(sr="tid1500", fhir=heard / "fhir"))
    _check_report(heard / record["sr"], record, contract)
    _check_fhir(heard / record["fhir"], record, contract)

    table = run_cli("predict", inbox.parent / "watched" / "done", "--model", three, "--format", "table",
                    env={"COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    assert any(name in table.stdout for name in THREE)
    listed = run_cli("predict", watched / "done", "--model", three, "--format", "csv")
    assert listed.stdout.splitlines()[0].count("p_") == 3 and "p_effusion" in listed.stdout


MULTI = ("effusion", "nodule", "cardiomegaly")
"""A multi-label model's independent findings."""


def test_a_multi_label_model_goes_through_every_output(tmp_path: Path) -> None:
    """Positive findings (at or above their operating points) in the record, one coded SR group each, one FHIR
    Observation each, and in the table, the CSV, the watch line and the status page."""
    from fhir.resources.bundle import Bundle

    from cxr_edge.runtime.live.status_page import _row
    from cxr_edge.runtime.outputs.records import live_line

    model = tiny_onnx(tmp_path / "multi.onnx", size=64, classes=MULTI, outputs="sigmoid",
                      operating_points=(0.01, 0.99, 0.02))  # effusion and cardiomegaly positive, nodule not
    classifier = Classifier.open(model, backend="ort")
    contract = classifier.contract
    assert contract.multi_label and contract.findings == ()
    inbox, watched = tmp_path / "in", tmp_path / "watched"
    inbox.mkdir()
    write_dicom(inbox / "chest.dcm", gradient(256, 256))
    FolderWatcher(inbox, watched, classifier, outputs=OutputOptions(sc=True, sr="tid1500", fhir=watched / "fhir"),
                  settle_s=0.05).run(once=True)
    (record,) = (json.loads(p.read_text()) for p in (watched / "results").glob("*.json"))
    probabilities = record["probabilities"]
    assert set(record["positive"]) == {"effusion", "cardiomegaly"}
    assert record["positive"] == sorted(record["positive"], key=lambda n: -probabilities[n])

    dump = subprocess.run([dcmtk("dsrdump"), str(watched / record["sr"])], capture_output=True, text=True)
    assert dump.returncode == 0 and not dump.stderr.strip() and dciodvfy_errors(watched / record["sr"]) == []
    groups = hd.sr.srread(watched / record["sr"]).content.get_image_measurement_groups()
    assert [g.finding_type for g in groups] == [Code(*contract.code(n)) for n in record["positive"]] + [None]
    every = {m.name.meaning: m.value for m in groups[-1].get_measurements()}
    assert all(abs(every[f"Probability of {contract.display(n)}"] - p) < 1e-6 for n, p in probabilities.items())

    bundle = Bundle.model_validate_json((watched / record["fhir"]).read_text())
    report = bundle.entry[0].resource
    assert [c.coding[0].code for c in report.conclusionCode] == [contract.code(n)[0] for n in record["positive"]]
    assert len(bundle.entry) == 2 + len(record["positive"])

    heard = tmp_path / "heard"
    heard_record = _heard(heard, classifier, OutputOptions(sr="tid1500"))
    heard_groups = hd.sr.srread(heard / heard_record["sr"]).content.get_image_measurement_groups()
    assert len(heard_groups) == len(heard_record["positive"]) + 1

    line = live_line(record, "chest.dcm")
    assert record["positive"][0] in line and f"+ {record['positive'][1]}" in line
    assert _row(record)["finding"] == " + ".join(record["positive"])
    listed = run_cli("predict", watched / "done", "--model", model, "--format", "csv")
    header, row = listed.stdout.splitlines()[:2]
    assert "positive" in header.split(",") and ";".join(record["positive"]) in row
    table = run_cli("predict", watched / "done", "--model", model, "--format", "table", env={"COLUMNS": "80"})
    assert table.returncode == 0 and f"{record['positive'][0]}+1" in table.stdout, table.stdout
