"""The DICOM listener on loopback with real peers: pynetdicom SCUs, dcmtk's storescu and dsrdump."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)

from cxr_edge.runtime.live.dicom_listener import DicomListener, Status
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.outputs.sr import BASIC_TEXT_SR, NOT_FOR_DIAGNOSTIC_USE
from cxr_edge.runtime.outputs.steps import OutputOptions
from tests.factories import (
    PATIENT_ID,
    PATIENT_NAME,
    dicom_dataset,
    gradient,
    tiny_onnx,
    write_compressed_dicom,
    write_jpeg_dicom,
)
from tests.live.peers import free_port, wait_for_echo

STORAGE = [ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
           DigitalXRayImageStorageForProcessing, SecondaryCaptureImageStorage]


def sr_texts(item: pydicom.Dataset) -> list[str]:
    """Every TEXT value anywhere in an SR's content tree."""
    found = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        found += sr_texts(child)
    return found


def dcmtk(tool: str) -> str:
    """dcmtk's `tool` from the system, never the environment's own bin folder: pynetdicom installs console
    scripts of the same names (storescu, storescp) there, with other options."""
    own = Path(sys.executable).parent
    path = shutil.which(tool, path=os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                                 if p and Path(p).resolve() != own.resolve()))
    assert path, f"{tool} not found: install Debian's dcmtk (make test does, as root)"
    return path


@pytest.fixture()
def classifier(tmp_path: Path) -> Classifier:
    return Classifier.open(tiny_onnx(tmp_path / "tiny.onnx", size=64), backend="ort")


@pytest.fixture(params=["tid1500"])
def listener(request: pytest.FixtureRequest, tmp_path: Path, classifier: Classifier):
    """A listener on loopback; ``@pytest.mark.parametrize("listener", ["basic"], indirect=True)`` picks the
    Basic Text SR."""
    records: list[dict] = []
    node = DicomListener(tmp_path / "out", classifier, port=0, host="127.0.0.1", on_record=records.append,
                         outputs=OutputOptions(sr=request.param))
    node.records = records  # type: ignore[attr-defined]
    node.start()
    yield node
    node.stop()


def associate(port: int, contexts=(Verification, *STORAGE), ae_title: str = "TESTSCU"):
    """An association proposing each SOP class once per transfer syntax (an SCP accepts one per context)."""
    ae = AE(ae_title=ae_title)
    for context in contexts:
        for syntax in ("1.2.840.10008.1.2.1", JPEGBaseline8Bit, JPEG2000Lossless, RLELossless):
            ae.add_requested_context(context, syntax)
    return ae.associate("127.0.0.1", port, ae_title="CXREDGE")


@pytest.mark.parametrize("listener", ["basic"], indirect=True)
def test_echo_store_result_and_basic_text_report(listener: DicomListener) -> None:
    assoc = associate(listener.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == Status.SUCCESS
    image = dicom_dataset(gradient(256, 256), StudyDescription="Chest PA", AccessionNumber="ACC1")
    assert assoc.send_c_store(image).Status == Status.SUCCESS
    assoc.release()
    assert listener.wait_idle()
    uid = image.SOPInstanceUID
    out = listener.out
    stored = pydicom.dcmread(out / "done" / f"{uid}.dcm")
    assert stored.SOPInstanceUID == uid and stored.PixelData == image.PixelData  # stored as sent
    record = json.loads((out / "results" / f"{uid}.json").read_text())
    assert record["sop_instance_uid"] == uid and record["error"] is None and record["sr"] == f"sr/{uid}.sr.dcm"
    assert record["label"] in record["probabilities"] and record["calling_ae"] == "TESTSCU"
    assert "patient" not in record and PATIENT_NAME not in json.dumps(record) and PATIENT_ID not in json.dumps(record)

    sr = pydicom.dcmread(out / record["sr"])
    assert sr.SOPClassUID == BASIC_TEXT_SR and sr.Modality == "SR"
    assert sr.StudyInstanceUID == image.StudyInstanceUID and sr.SeriesInstanceUID != image.SeriesInstanceUID
    assert sr.PatientName == PATIENT_NAME and sr.PatientID == PATIENT_ID and sr.AccessionNumber == "ACC1"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == image.SeriesInstanceUID
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
    texts = [item.TextValue for item in sr.ContentSequence if item.ValueType == "TEXT"]
    finding = next(item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeMeaning == "Finding")
    assert record["label"] in finding.TextValue
    assert finding.ContentSequence[0].ValueType == "IMAGE"
    assert finding.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
    assert NOT_FOR_DIAGNOSTIC_USE in texts
    assert all(f"{name} " in " ".join(texts) for name in record["probabilities"])
    equipment = sr.ContributingEquipmentSequence[0]
    assert equipment.ManufacturerModelName == "tiny.onnx" and equipment.Manufacturer == "cxr-edge"
    # dcmtk reads it as a valid Basic Text SR document (it checks the IOD's content constraints)
    dump = subprocess.run([dcmtk("dsrdump"), str(out / record["sr"])], capture_output=True, text=True)
    assert dump.returncode == 0 and "Basic Text SR Document" in dump.stdout
    assert not dump.stderr.strip(), dump.stderr


@pytest.mark.parametrize("kind", ["jpeg", "jpeg2000", "rle", "secondary capture", "for processing"])
def test_radiograph_classes_and_transfer_syntaxes(listener: DicomListener, tmp_path: Path, kind: str) -> None:
    pixels = gradient(200, 160)
    path = tmp_path / "image.dcm"
    if kind == "jpeg":
        write_jpeg_dicom(path, pixels)
    elif kind == "jpeg2000":
        write_compressed_dicom(path, pixels, JPEG2000Lossless)
    elif kind == "rle":
        write_compressed_dicom(path, pixels, RLELossless, modality="CR", sop_class=ComputedRadiographyImageStorage)
    elif kind == "secondary capture":
        write_compressed_dicom(path, pixels, RLELossless, modality="OT", sop_class=SecondaryCaptureImageStorage)
    else:
        write_compressed_dicom(path, pixels, RLELossless, sop_class=DigitalXRayImageStorageForProcessing,
                               PresentationIntentType="FOR PROCESSING")
    dataset = pydicom.dcmread(path)
    assoc = associate(listener.port)
    assert assoc.send_c_store(dataset).Status == Status.SUCCESS
    assoc.release()
    assert listener.wait_idle()
    record = json.loads((listener.out / "results" / f"{dataset.SOPInstanceUID}.json").read_text())
    assert record["error"] is None and record["label"] is not None
    assert (listener.out / record["sr"]).exists()
    if kind == "for processing":
        assert any("raw detector data" in w for w in record["warnings"])
        assert any("raw detector data" in text for text in sr_texts(pydicom.dcmread(listener.out / record["sr"])))


def test_other_sop_classes_are_refused(listener: DicomListener) -> None:
    assoc = associate(listener.port, contexts=(Verification, CTImageStorage))
    assert assoc.is_established
    ct_results = {c.result for c in assoc.rejected_contexts if c.abstract_syntax == CTImageStorage}
    assert ct_results == {0x03}  # abstract syntax not supported
    assert Verification in {c.abstract_syntax for c in assoc.accepted_contexts}
    ct = dicom_dataset(gradient(), modality="CT", sop_class=CTImageStorage)
    with pytest.raises(ValueError, match="presentation context"):
        assoc.send_c_store(ct)
    assoc.release()


def test_bad_dataset_is_quarantined_and_the_listener_keeps_going(listener: DicomListener) -> None:
    assoc = associate(listener.port)
    no_pixels = dicom_dataset(gradient())
    del no_pixels.PixelData
    assert assoc.send_c_store(no_pixels).Status == Status.DATASET_DOES_NOT_MATCH
    good = dicom_dataset(gradient())
    assert assoc.send_c_store(good).Status == Status.SUCCESS
    assoc.release()
    assert listener.wait_idle()
    reasons = list((listener.out / "quarantine").glob("*.reason.txt"))
    assert len(reasons) == 1 and "no pixel data" in reasons[0].read_text()
    copy = pydicom.dcmread(reasons[0].with_name(reasons[0].name.replace(".reason.txt", ".dcm")))
    assert copy.SOPInstanceUID == no_pixels.SOPInstanceUID
    assert (listener.out / "results" / f"{good.SOPInstanceUID}.json").exists()
    assert not (listener.out / "results" / f"{no_pixels.SOPInstanceUID}.json").exists()


def test_unreadable_pixels_get_a_result_with_the_reason(listener: DicomListener) -> None:
    """Stored (the header was fine), then the decoder failed: failed/ with a reason, no SR."""
    broken = dicom_dataset(gradient(64, 64))
    broken.PixelData = broken.PixelData[:100]
    assoc = associate(listener.port)
    assert assoc.send_c_store(broken).Status == Status.SUCCESS
    assoc.release()
    assert listener.wait_idle()
    uid = broken.SOPInstanceUID
    record = json.loads((listener.out / "results" / f"{uid}.json").read_text())
    assert record["label"] is None and record["error"] and record["sr"] is None
    assert (listener.out / "failed" / f"{uid}.dcm").exists()
    assert (listener.out / "failed" / f"{uid}.reason.txt").read_text().startswith(f"SOP Instance UID {uid}: ")


@pytest.mark.parametrize("listener", ["basic"], indirect=True)
def test_a_rejected_image_gets_a_basic_report_that_says_so_and_no_finding(listener: DicomListener) -> None:
    hand = dicom_dataset(gradient(200, 160), BodyPartExamined="HAND")
    assoc = associate(listener.port)
    assert assoc.send_c_store(hand).Status == Status.SUCCESS
    assoc.release()
    assert listener.wait_idle()
    record = json.loads((listener.out / "results" / f"{hand.SOPInstanceUID}.json").read_text())
    assert (record["status"], record["label"], record["error"]) == ("rejected", None, None)
    assert record["warnings"][0] == "rejected: the DICOM body part is HAND, not the chest"
    sr = pydicom.dcmread(listener.out / record["sr"])
    concepts = [item.ConceptNameCodeSequence[0].CodeMeaning for item in sr.ContentSequence]
    texts = " ".join(getattr(item, "TextValue", "") for item in sr.ContentSequence)
    assert "Finding" not in concepts and "Impression" not in concepts
    assert "Not classified" in texts and "No finding is reported" in texts and "body part is HAND" in texts
    assert not any(f"{name} 0." in texts for name in record["probabilities"])  # no probabilities either
    assert (listener.out / "done" / f"{hand.SOPInstanceUID}.dcm").exists()
    dump = subprocess.run([dcmtk("dsrdump"), str(listener.out / record["sr"])], capture_output=True, text=True)
    assert dump.returncode == 0 and not dump.stderr.strip(), dump.stderr


def test_allow_list(tmp_path: Path, classifier: Classifier) -> None:
    node = DicomListener(tmp_path / "out", classifier, port=0, host="127.0.0.1", allow=["XRAYROOM1"])
    node.start()
    try:
        stranger = associate(node.port, ae_title="STRANGER")
        assert stranger.is_rejected
        friend = associate(node.port, ae_title="XRAYROOM1")
        assert friend.is_established and friend.send_c_echo().Status == Status.SUCCESS
        friend.release()
    finally:
        node.stop()


def test_concurrent_associations_and_duplicates(listener: DicomListener) -> None:
    sent: list[str] = []
    statuses: list[int] = []

    def sender() -> None:
        assoc = associate(listener.port)
        for _ in range(6):
            ds = dicom_dataset(gradient(128, 128))
            statuses.append(assoc.send_c_store(ds).Status)
            sent.append(ds.SOPInstanceUID)
        statuses.append(assoc.send_c_store(ds).Status)  # the last one again
        assoc.release()

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert listener.wait_idle()
    assert statuses == [Status.SUCCESS] * 28
    assert sorted(p.stem for p in (listener.out / "results").iterdir()) == sorted(sent)
    assert len(listener.records) == 24  # a re-sent instance is not classified twice


def test_restart_resumes_stored_instances(tmp_path: Path, classifier: Classifier) -> None:
    out = tmp_path / "out"
    (out / "incoming").mkdir(parents=True)
    waiting = dicom_dataset(gradient())  # stored, then the process died
    waiting.save_as(out / "incoming" / f"{waiting.SOPInstanceUID}.dcm", enforce_file_format=True)
    reported = dicom_dataset(gradient())  # its result was written, its report and move were not
    uid = reported.SOPInstanceUID
    reported.save_as(out / "incoming" / f"{uid}.dcm", enforce_file_format=True)
    (out / "results").mkdir()
    earlier = {"label": "normal", "probabilities": dict.fromkeys(("normal", "covid19"), 0.5), "warnings": [],
               "error": None, "sr": f"sr/{uid}.sr.dcm", "moved_to": f"done/{uid}.dcm"}
    (out / "results" / f"{uid}.json").write_text(json.dumps(earlier))
    records: list[dict] = []
    node = DicomListener(out, classifier, port=0, host="127.0.0.1", on_record=records.append)
    node.start()
    try:
        assert node.wait_idle()
    finally:
        node.stop()
    assert (out / "results" / f"{waiting.SOPInstanceUID}.json").exists()
    assert (out / "sr" / f"{waiting.SOPInstanceUID}.sr.dcm").exists()
    assert (out / "done" / f"{waiting.SOPInstanceUID}.dcm").exists() and not list((out / "incoming").iterdir())
    assert json.loads((out / "results" / f"{uid}.json").read_text()) == earlier  # not classified again
    report = pydicom.dcmread(out / "sr" / f"{uid}.sr.dcm")  # rebuilt from the result
    assert report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[
        0].ReferencedSOPInstanceUID == uid
    assert (out / "done" / f"{uid}.dcm").exists() and len(records) == 2


def test_keep_phi_and_no_phi_in_logs(tmp_path: Path, classifier: Classifier, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    node = DicomListener(tmp_path / "out", classifier, port=0, host="127.0.0.1",
                         outputs=OutputOptions(sr="tid1500", keep_phi=True))
    node.start()
    try:
        assoc = associate(node.port)
        good = dicom_dataset(gradient())
        bad = dicom_dataset(gradient())
        del bad.PixelData
        odd = dicom_dataset(gradient())
        odd.add_new(0x00101010, "AS", "ABCD-SECRET-AGE")  # invalid values pydicom would quote in its warnings
        odd.add_new(0x00100030, "DA", "SECRET-BIRTH")
        for ds in (good, bad):
            assoc.send_c_store(ds)
        assoc.release()
        odd.save_as(tmp_path / "odd.dcm", enforce_file_format=True)
        with warnings.catch_warnings(record=True) as said:  # sent by dcmtk: only the listener is in this process
            warnings.simplefilter("always")
            sent = subprocess.run([dcmtk("storescu"), "-aec", "CXREDGE", "127.0.0.1", str(node.port),
                                   str(tmp_path / "odd.dcm")], capture_output=True, text=True)
            assert sent.returncode == 0, sent.stderr
            assert node.wait_idle()
    finally:
        node.stop()
    record = json.loads((tmp_path / "out" / "results" / f"{good.SOPInstanceUID}.json").read_text())
    assert record["patient"] == {"name": PATIENT_NAME, "id": PATIENT_ID}
    assert (tmp_path / "out" / "results" / f"{odd.SOPInstanceUID}.json").exists()
    assert "quarantined" in caplog.text
    told = caplog.text + " ".join(str(w.message) for w in said)
    assert PATIENT_NAME not in told and PATIENT_ID not in told and "SECRET" not in told


def test_cli_with_dcmtk_storescu(tmp_path: Path) -> None:
    """`cxr-edge dicom-listen` as a service would run it, fed by dcmtk's storescu; SIGTERM stops it cleanly."""
    model = tiny_onnx(tmp_path / "tiny.onnx", size=64)
    port = free_port()
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "cxr_edge.cli", "dicom-listen", "--port", str(port),
                                "--out", str(out), "--model", str(model), "--backend", "ort", "--allow", "STORESCU"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # until the listener answers C-ECHO
            echo = subprocess.run([dcmtk("echoscu"), "-aec", "CXREDGE", "-aet", "STORESCU", "127.0.0.1", str(port)],
                                  capture_output=True, text=True)
            if echo.returncode == 0:
                break
            assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
            time.sleep(0.2)
        files = []
        for i, writer in enumerate((write_jpeg_dicom, None)):
            path = tmp_path / f"send{i}.dcm"
            if writer is None:
                dicom_dataset(gradient(150, 150), StudyInstanceUID=generate_uid()).save_as(
                    path, enforce_file_format=True)
            else:
                writer(path, gradient(150, 150))
            files.append(path)
        send = subprocess.run([dcmtk("storescu"), "-aec", "CXREDGE", "-aet", "STORESCU", "-xy", "127.0.0.1",
                               str(port), *map(str, files)], capture_output=True, text=True)
        assert send.returncode == 0, send.stderr
        uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
        deadline = time.monotonic() + 20
        while not all((out / "results" / f"{uid}.json").exists() for uid in uids):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = subprocess.run([dcmtk("echoscu"), "-aec", "CXREDGE", "-aet", "OTHER", "127.0.0.1", str(port)],
                                 capture_output=True, text=True)
        assert refused.returncode != 0
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert all(uid in stdout for uid in uids)
    assert PATIENT_NAME not in stdout + stderr and PATIENT_ID not in stdout + stderr
    assert "stopped: 2 classified, 0 failed" in stderr


def _listen(port: int, out: Path, model: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cxr_edge.cli", "dicom-listen", "--port", str(port), "--host",
                             "127.0.0.1", "--out", str(out), "--model", str(model), "--backend", "ort"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_loses_no_accepted_instance(tmp_path: Path) -> None:
    """Every instance that got Success has exactly one result after a kill -9 and a restart."""
    model = tiny_onnx(tmp_path / "tiny.onnx", size=64)
    port, out = free_port(), tmp_path / "out"
    process = _listen(port, out, model)
    accepted: list[str] = []
    try:
        wait_for_echo(port, process)
        assoc = associate(port)
        for i in range(60):
            if i == 30:
                process.kill()  # mid-stream: the association breaks, queued instances wait in incoming/
                process.wait()
            ds = dicom_dataset(gradient(400, 400))
            try:
                status = assoc.send_c_store(ds)
            except RuntimeError:  # the association is gone
                break
            if "Status" in status and status.Status == Status.SUCCESS:
                accepted.append(ds.SOPInstanceUID)
        assoc.release()
    finally:
        process.kill()
        process.wait()
    assert len(accepted) == 30
    unfinished = len(list((out / "incoming").glob("*.dcm")))
    process = _listen(port, out, model)
    try:
        wait_for_echo(port, process)
        deadline = time.monotonic() + 30
        while list((out / "incoming").glob("*.dcm")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    results = sorted(p.stem for p in (out / "results").iterdir())
    assert results == sorted(accepted), f"{unfinished} were unfinished at the kill"
    assert sorted(p.name for p in (out / "sr").iterdir()) == sorted(f"{uid}.sr.dcm" for uid in accepted)
    assert sorted(p.stem for p in (out / "done").iterdir()) == sorted(accepted)


# --- idle peers, AE titles, reused UIDs ------------------------------------------------------------------------


def _idle_sockets(port: int, count: int, source: str) -> list[socket.socket]:
    """TCP connections that never send an association request (a port scanner, a hung or hostile peer)."""
    opened = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        opened.append(sock)
    return opened


def _closed_by_listener(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_idle_connections_from_one_address_cannot_lock_out_another(listener: DicomListener) -> None:
    from cxr_edge.runtime.live.dicom_listener import PER_PEER

    idle = _idle_sockets(listener.port, 20, "127.0.0.2")
    try:
        refused = [_closed_by_listener(sock, 0.5) for sock in idle[PER_PEER:]]
        assert all(refused)  # beyond the per-address limit: closed at once
        started = time.monotonic()
        assoc = associate(listener.port)
        assert assoc.is_established
        ds = dicom_dataset(gradient(128, 128))
        assert assoc.send_c_store(ds).Status == Status.SUCCESS
        assoc.release()
        assert time.monotonic() - started < 5
    finally:
        for sock in idle:
            sock.close()
    assert listener.wait_idle()


def test_idle_connections_that_close_free_their_slots_at_once(listener: DicomListener) -> None:
    for sock in _idle_sockets(listener.port, 16, "127.0.0.1"):
        sock.close()
    time.sleep(0.5)
    started = time.monotonic()
    assoc = associate(listener.port)
    assert assoc.is_established and assoc.send_c_echo().Status == Status.SUCCESS
    assoc.release()
    assert time.monotonic() - started < 3


def test_an_idle_connection_is_closed_after_the_acse_timeout(tmp_path: Path, classifier: Classifier,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import cxr_edge.runtime.live.dicom_listener as module

    monkeypatch.setattr(module, "ACSE_TIMEOUT_S", 1.0)
    node = DicomListener(tmp_path / "out", classifier, port=0, host="127.0.0.1")
    node.start()
    try:
        (sock,) = _idle_sockets(node.port, 1, "127.0.0.1")
        assert _closed_by_listener(sock, 5.0)
    finally:
        node.stop()


def _association_request(calling: bytes, called: bytes = b"CXREDGE") -> bytes:
    """An A-ASSOCIATE-RQ PDU for Verification, with the calling AE title's 16 bytes exactly as given."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "PLACEHOLDER", called.decode()
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    data = bytearray(pdu.encode())
    data[26:42] = calling.ljust(16, b" ")
    return bytes(data)


@pytest.mark.parametrize(("calling", "accepted"), [
    (b"XRAYROOM1", True),
    (b"  XRAYROOM1", True),      # leading and trailing spaces are not significant (PS3.5 6.2)
    (b"xrayroom1", False),       # titles are case-sensitive
    (b"XRAYROOM1\t", False),     # a control character makes the title invalid (pynetdicom would strip it)
    (b"\nXRAYROOM1", False),
    (b"XRAY\\ROOM1", False),     # backslash is not allowed
    (b"XRAYROOM", False),
    (b"XRAYROOM12", False),
])
def test_calling_ae_titles_match_exactly_after_dicom_padding(tmp_path: Path, classifier: Classifier,
                                                             calling: bytes, accepted: bool) -> None:
    node = DicomListener(tmp_path / "out", classifier, port=0, host="127.0.0.1", allow=["XRAYROOM1"])
    node.start()
    try:
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
            sock.sendall(_association_request(calling))
            reply = sock.recv(1)
        # A-ASSOCIATE-AC, or A-ASSOCIATE-RJ (an A-ABORT where pynetdicom's decoder refuses the PDU first)
        assert reply == b"\x02" if accepted else reply in (b"\x03", b"\x07")
    finally:
        node.stop()


def test_invalid_titles_are_refused_at_start(tmp_path: Path, classifier: Classifier) -> None:
    from cxr_edge.runtime.errors import CxrEdgeError

    for title in ("", "   ", "A" * 17, "BAD\\TITLE", "TAB\tTITLE"):
        with pytest.raises(CxrEdgeError, match="is not valid"):
            DicomListener(tmp_path / "out", classifier, allow=[title])


def test_a_reused_uid_with_other_pixels_is_stored_under_a_new_name_with_a_warning(listener: DicomListener) -> None:
    first = dicom_dataset(gradient(128, 128))
    second = dicom_dataset(gradient(128, 128)[::-1].copy())
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    second.StudyInstanceUID, second.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
    assoc = associate(listener.port)
    for ds in (first, second, second, first):
        assert assoc.send_c_store(ds).Status == Status.SUCCESS
    assoc.release()
    assert listener.wait_idle()
    uid = first.SOPInstanceUID
    assert sorted(p.name for p in (listener.out / "results").iterdir()) == [f"{uid}.json", f"{uid}_2.json"]
    assert sorted(p.name for p in (listener.out / "done").iterdir()) == [f"{uid}.dcm", f"{uid}_2.dcm"]
    records = {r["stored_as"]: r for r in listener.records}
    assert set(records) == {uid, f"{uid}_2"} and len(listener.records) == 2
    assert records[f"{uid}_2"]["sop_instance_uid"] == uid
    assert any("already used for a different dataset" in w for w in records[f"{uid}_2"]["warnings"])
    stored = pydicom.dcmread(listener.out / "done" / f"{uid}_2.dcm")
    assert (stored.pixel_array == gradient(128, 128)[::-1]).all()
