"""Results where people look: the coded SR and the heatmap Secondary Capture checked by dcmtk, dicom3tools and
highdicom; FHIR validated by fhir.resources; forwarding to a real Storage SCP that is down, then up, across a
kill -9 of the listener."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

import cxr_edge
from cxr_edge.runtime.live.dicom_listener import DicomListener, Status
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.model_file import file_sha256
from cxr_edge.runtime.outputs.coded_sr import COMPREHENSIVE_3D_SR, STATUS_CODES, code_of
from cxr_edge.runtime.outputs.outbox import parse_destination
from cxr_edge.runtime.outputs.sr import NOT_FOR_DIAGNOSTIC_USE
from cxr_edge.runtime.outputs.steps import OutputOptions
from tests.factories import PATIENT_ID, PATIENT_NAME, dicom_dataset, gradient, tiny_onnx
from tests.live.peers import free_port, wait_for_echo
from tests.live.test_dicom_listener import associate, dcmtk, sr_texts

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: make test installs Debian's dcmtk and dicom3tools"
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """dicom3tools' IOD checker: every line it calls an error (warnings are allowed)."""
    run = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture()
def classifier(tmp_path: Path) -> Classifier:
    return Classifier.open(tiny_onnx(tmp_path / "tiny.onnx", size=64), backend="ort")


def send(port: int, *datasets: pydicom.Dataset) -> None:
    assoc = associate(port)
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == Status.SUCCESS
    assoc.release()


def run_listener(out: Path, classifier: Classifier, **options) -> DicomListener:
    node = DicomListener(out, classifier, port=0, host="127.0.0.1", **options)
    node.start()
    return node


def classify_one(out: Path, classifier: Classifier, image: pydicom.Dataset, **options) -> dict:
    """Send one image to a listener started with `options`, stop it, and return the image's result record."""
    node = run_listener(out, classifier, **options)
    try:
        send(node.port, image)
        assert node.wait_idle()
    finally:
        node.stop()
    return json.loads((out / "results" / f"{image.SOPInstanceUID}.json").read_text())


def test_coded_report_heatmap_and_fhir_of_a_classified_image(tmp_path: Path, classifier: Classifier) -> None:
    out = tmp_path / "out"
    image = dicom_dataset(gradient(256, 256), StudyDescription="Chest PA", AccessionNumber="ACC1",
                          StudyDate="20261130", StudyTime="101500", StudyID="S1")
    record = classify_one(out, classifier, image, outputs=OutputOptions(sr="tid1500", sc=True, fhir=out / "fhir"))
    assert record["status"] in ("classified", "uncertain") and record["label"] is not None
    contract = classifier.contract

    # the coded SR: dcmtk and dicom3tools accept it, highdicom reads back what was meant
    path = out / record["sr"]
    dump = subprocess.run([dcmtk("dsrdump"), str(path)], capture_output=True, text=True)
    assert dump.returncode == 0 and not dump.stderr.strip(), dump.stderr
    assert "Comprehensive 3D SR" in dump.stdout and "Imaging Measurement Report" in dump.stdout
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR and sr.StudyInstanceUID == image.StudyInstanceUID
    assert sr.PatientID == PATIENT_ID and sr.AccessionNumber == "ACC1" and sr.VerificationFlag == "UNVERIFIED"
    (group,) = sr.content.get_image_measurement_groups()
    assert group.finding_type == code_of(contract, record["finding"])  # the finding, coded as the model says
    probabilities = {m.name.meaning: m.value for m in group.get_measurements()}
    for name, p in record["probabilities"].items():
        assert abs(probabilities[f"Probability of {contract.display(name)}"] - p) < 1e-6
    subtype = [] if record["finding"] == record["label"] else [code_of(contract, record["label"])]
    assert [e.value for e in group.get_qualitative_evaluations()] == [STATUS_CODES[record["status"]], *subtype]
    said = {i.ConceptNameCodeSequence[0].CodeMeaning: getattr(i, "TextValue", None) for i in group[0].ContentSequence}
    assert said["Algorithm Name"] == "cxr-edge tiny.onnx" and said["Algorithm Version"] == cxr_edge.__version__
    assert said["Algorithm Parameters"] == f"model_sha256={file_sha256(tmp_path / 'tiny.onnx')}"
    assert group.source_images[0].referenced_sop_instance_uid == image.SOPInstanceUID
    assert NOT_FOR_DIAGNOSTIC_USE in sr_texts(sr)

    # the heatmap as Secondary Capture: same study, own series, derived from the image, warning burned in
    capture_path = out / record["sc"]
    assert dciodvfy_errors(capture_path) == []
    parsed = subprocess.run([dcmtk("dcmdump"), "-q", str(capture_path)],
                            capture_output=True, text=True)
    assert parsed.returncode == 0 and not parsed.stderr.strip(), parsed.stderr  # dcmtk reads it whole
    capture = pydicom.dcmread(capture_path)
    assert capture.SOPClassUID == SECONDARY_CAPTURE and capture.StudyInstanceUID == image.StudyInstanceUID
    assert capture.SeriesInstanceUID not in (image.SeriesInstanceUID, sr.SeriesInstanceUID)
    assert capture.BurnedInAnnotation == "YES" and list(capture.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert capture.PatientName == PATIENT_NAME and contract.display(record["label"]) in capture.DerivationDescription
    pixels = capture.pixel_array
    band = pixels[: pixels.shape[0] // 8]
    red = (band[..., 0] > 150) & (band[..., 1] < 80) & (band[..., 2] < 80)
    assert red.sum() > 50  # "NOT FOR DIAGNOSTIC USE" in red above the picture
    assert (out / record["cam"]).exists()

    # FHIR: valid against the specification's models, no patient identifier
    from fhir.resources.bundle import Bundle

    text = (out / record["fhir"]).read_text()
    bundle = Bundle.model_validate_json(text)
    report, observation = (entry.resource for entry in bundle.entry)
    assert report.status == observation.status == "preliminary"
    assert observation.valueCodeableConcept.coding[0].code == contract.code(record["finding"])[0]
    assert len(observation.component) == len(record["probabilities"]) + len(subtype)
    assert PATIENT_NAME not in text and PATIENT_ID not in text and observation.subject is None

    # status.json: what the listener did, nothing about the patient
    status = json.loads((out / "status.json").read_text())
    assert status["mode"] == "dicom-listen" and status["state"] == "stopped" and status["counts"]["classified"] + \
        status["counts"]["uncertain"] == 1
    assert PATIENT_NAME not in json.dumps(status) and PATIENT_ID not in json.dumps(status)


def test_a_rejected_image_gets_a_coded_report_without_a_finding(tmp_path: Path, classifier: Classifier) -> None:
    out = tmp_path / "out"
    hand = dicom_dataset(gradient(200, 160), BodyPartExamined="HAND")
    record = classify_one(out, classifier, hand,
                          outputs=OutputOptions(sr="tid1500", sc=True, fhir=out / "fhir", keep_phi=True))
    assert record["status"] == "rejected" and record.get("sc") is None  # no heatmap for a refusal
    dump = subprocess.run([dcmtk("dsrdump"), str(out / record["sr"])], capture_output=True, text=True)
    assert dump.returncode == 0 and not dump.stderr.strip(), dump.stderr
    assert dciodvfy_errors(out / record["sr"]) == []
    sr = hd.sr.srread(out / record["sr"])
    (group,) = sr.content.get_image_measurement_groups()
    assert group.finding_type is None
    assert not any(m.name.meaning.startswith("Probability") for m in group.get_measurements())
    assert [e.value for e in group.get_qualitative_evaluations()] == [STATUS_CODES["rejected"]]
    assert any("body part is HAND" in text for text in sr_texts(sr))
    from fhir.resources.bundle import Bundle

    observation = Bundle.model_validate_json((out / record["fhir"]).read_text()).entry[1].resource
    assert observation.valueCodeableConcept is None and observation.dataAbsentReason.coding[0].code == "not-performed"
    assert observation.subject.identifier.value == PATIENT_ID  # asked for with keep_phi


class RecordingSCP:
    """A Storage SCP on 127.0.0.1 (pynetdicom) that records every C-STORE it answers, repeats included."""

    def __init__(self, port: int) -> None:
        self.received: list[str] = []
        self.sop_classes: list[str] = []
        ae = AE(ae_title="PACS")
        ae.add_supported_context(Verification)
        for sop_class in (COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE, "1.2.840.10008.5.1.4.1.1.88.11"):
            ae.add_supported_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

        def on_store(event) -> int:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            self.sop_classes.append(str(event.request.AffectedSOPClassUID))
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def stop(self) -> None:
        self.server.shutdown()


def test_forwarding_waits_for_a_pacs_that_is_down_then_delivers_everything_once(tmp_path: Path,
                                                                                classifier: Classifier) -> None:
    out, port = tmp_path / "out", free_port()
    node = run_listener(out, classifier, outputs=OutputOptions(sr="tid1500", sc=True),
                        forward=[parse_destination(f"PACS@127.0.0.1:{port}")])
    images = [dicom_dataset(gradient(128 + 8 * i, 128)) for i in range(3)]
    pacs = None
    try:
        send(node.port, *images)
        assert node.wait_idle()
        time.sleep(1.5)  # the first attempts fail: nobody listens on the port
        status = json.loads(next((out / "outbox").glob("*/status.json")).read_text())
        assert status["backlog"] == 6 and status["sent"] == 0 and "cannot connect" in status["last_error"]
        assert status["next_attempt"] is not None
        pacs = RecordingSCP(port)
        assert node.outbox.wait_empty(timeout=40), "the outbox did not empty after the PACS came up"
    finally:
        node.stop()
        if pacs is not None:
            pacs.stop()
    records = [json.loads((out / "results" / f"{ds.SOPInstanceUID}.json").read_text()) for ds in images]
    expected = sorted(pydicom.dcmread(out / r[key]).SOPInstanceUID for r in records for key in ("sr", "sc"))
    assert sorted(pacs.received) == expected  # each report and heatmap once
    assert sorted(set(pacs.sop_classes)) == [SECONDARY_CAPTURE, COMPREHENSIVE_3D_SR]
    status = json.loads(next((out / "outbox").glob("*/status.json")).read_text())
    assert status["backlog"] == 0 and status["sent"] == 6


def test_a_pacs_refusal_is_kept_aside_with_its_reason_and_the_rest_goes_on(tmp_path: Path,
                                                                           classifier: Classifier) -> None:
    out, port = tmp_path / "out", free_port()
    received: list[str] = []
    ae = AE(ae_title="PACS")
    ae.add_supported_context(COMPREHENSIVE_3D_SR, ["1.2.840.10008.1.2.1"])

    def on_store(event) -> int:
        if not received:
            received.append("refused")
            return 0xA900  # dataset does not match SOP class: retrying will not help
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    node = run_listener(out, classifier, forward=[parse_destination(f"PACS@127.0.0.1:{port}")])
    try:
        send(node.port, dicom_dataset(gradient()), dicom_dataset(gradient(90, 90)))
        assert node.wait_idle() and node.outbox.wait_empty(timeout=20)
    finally:
        node.stop()
        server.shutdown()
    refused = list((out / "outbox").glob("*/refused/*.sr.dcm"))
    assert len(refused) == 1 and len(received) == 2
    reason = refused[0].with_name(refused[0].name + ".reason.txt").read_text()
    assert "0xA900" in reason


def test_forward_survives_kill_9_and_a_pacs_down_across_the_restart(tmp_path: Path) -> None:
    """`dicom-listen --forward` as a service: the PACS (dcmtk storescp) is down, the listener is killed with
    SIGKILL while reports wait, restarted, then the PACS comes up: every report arrives."""
    model = tiny_onnx(tmp_path / "tiny.onnx", size=64)
    port, pacs_port, out, received = free_port(), free_port(), tmp_path / "out", tmp_path / "pacs"
    received.mkdir()
    command = [sys.executable, "-m", "cxr_edge.cli", "dicom-listen", "--port", str(port), "--host", "127.0.0.1",
               "--out", str(out), "--model", str(model), "--backend", "ort", "--forward",
               f"STORESCP@127.0.0.1:{pacs_port}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    images = [dicom_dataset(gradient(100 + 10 * i, 100)) for i in range(4)]
    try:
        wait_for_echo(port, process)
        send(port, *images)
        deadline = time.monotonic() + 30
        while len(pending(out)) < len(images):
            assert time.monotonic() < deadline, "reports did not reach the outbox"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    storescp = None
    try:
        wait_for_echo(port, process)
        time.sleep(1.0)
        storescp = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(received), str(pacs_port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while pending(out):
            assert storescp.poll() is None, storescp.stderr.read()
            assert time.monotonic() < deadline, ("the outbox did not empty after the PACS came up: "
                                                 + next((out / "outbox").glob("*/status.json")).read_text())
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        if storescp is not None:
            storescp.terminate()
            storescp.wait(timeout=10)
    delivered = sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in received.iterdir())
    reports = sorted(pydicom.dcmread(p).SOPInstanceUID for p in (out / "sr").iterdir())
    assert delivered == reports and len(reports) == len(images)
    assert PATIENT_NAME not in stderr and PATIENT_ID not in stderr


def pending(out: Path) -> list[Path]:
    """What waits in the outbox (a file being queued has a dot-name until it is whole)."""
    return [p for p in (out / "outbox").glob("*/pending/*") if not p.name.startswith(".")]


@pytest.mark.parametrize("text", ["PACS", "PACS@host", "PACS@host:99999", "A\\B@host:104",
                                  "WAY_TOO_LONG_AE_TITLE@host:104"])
def test_bad_forward_destinations_are_one_line_errors(text: str, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "dicom-listen", "--out", str(tmp_path / "o"),
                          "--forward", text], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and len(run.stderr.strip().splitlines()) == 1 and "forward destination" in run.stderr
    assert not (tmp_path / "o").exists()



def test_watch_reports_dicom_inputs_and_forwards_them(tmp_path: Path, classifier: Classifier) -> None:
    from cxr_edge.runtime.live.watch import FolderWatcher

    inbox, out, port = tmp_path / "in", tmp_path / "out", free_port()
    inbox.mkdir()
    film = dicom_dataset(gradient(160, 160))
    film.save_as(inbox / "film.dcm", enforce_file_format=True)
    cv2.imwrite(str(inbox / "photo.png"), np.full((64, 64), 128, np.uint8))  # not DICOM: no report
    pacs = RecordingSCP(port)
    try:
        watcher = FolderWatcher(inbox, out, classifier, settle_s=0.05,
                                forward=[parse_destination(f"PACS@127.0.0.1:{port}")])
        watcher.run(once=True)
    finally:
        pacs.stop()
    results = {json.loads(p.read_text())["path"].rsplit("/", 1)[-1]: json.loads(p.read_text())
               for p in (out / "results").iterdir()}
    report = hd.sr.srread(out / results["film.dcm"]["sr"])
    assert report.StudyInstanceUID == film.StudyInstanceUID and results["photo.png"].get("sr") is None
    assert pacs.received == [report.SOPInstanceUID]
    status = json.loads((out / "status.json").read_text())
    assert status["mode"] == "watch" and status["state"] == "stopped" and status["outbox_backlog"] == 0
    assert PATIENT_NAME not in json.dumps(status)

