"""DICOM's secure transport (PS3.15 Annex B) on both sides, against dcmtk: the node accepts `storescu +tls` with a
certificate its CA signed and refuses plain TCP, a wrong CA and a client without a certificate; forwarding reaches
`storescp +tls` only with the PACS's CA."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from cxr_edge.runtime.live.dicom_listener import DicomListener
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.outputs.outbox import Outbox, parse_destination
from cxr_edge.runtime.outputs.steps import OutputOptions
from cxr_edge.runtime.outputs.tls import client_context, server_context
from tests.certificates import Authority
from tests.factories import gradient, tiny_onnx, write_dicom
from tests.live.peers import free_port
from tests.live.test_dicom_listener import dcmtk


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Authority(folder / "ca"), Authority(folder / "other", "another CA")
    return {"ca": ca, "node": ca.issue("node"), "sender": ca.issue("sender"), "pacs": ca.issue("pacs"),
            "stranger": other.issue("stranger"), "other": other}


def _storescu(port: int, film: Path, *tls: object) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("storescu"), *map(str, tls), "-aec", "CXREDGE", "127.0.0.1", str(port), str(film)],
                          capture_output=True, text=True, timeout=60)


def test_the_node_speaks_tls_only_and_only_to_certified_senders(tmp_path: Path, pki: dict) -> None:
    classifier = Classifier.open(tiny_onnx(tmp_path / "tiny.onnx", size=64), backend="ort")
    out = tmp_path / "out"
    tls = server_context(pki["node"].cert, pki["node"].key, pki["ca"].cert)
    node = DicomListener(out, classifier, port=0, host="127.0.0.1", outputs=OutputOptions(sr="tid1500"), tls=tls)
    node.start()
    try:
        films = [write_dicom(tmp_path / f"film{i}.dcm", gradient(128, 128)) for i in range(4)]
        uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in films]
        sent = _storescu(node.port, films[0], "+tls", pki["sender"].key, pki["sender"].cert, "+cf", pki["ca"].cert)
        assert sent.returncode == 0, sent.stderr
        plain = _storescu(node.port, films[1])
        assert plain.returncode != 0
        stranger = _storescu(node.port, films[2], "+tls", pki["stranger"].key, pki["stranger"].cert, "+cf",
                             pki["ca"].cert)
        assert stranger.returncode != 0
        ae = AE(ae_title="NOCERT")  # TLS, the node's CA trusted, but no certificate of its own
        ae.add_requested_context(Verification)
        anonymous = ae.associate("127.0.0.1", node.port, ae_title="CXREDGE",
                                 tls_args=(client_context(pki["ca"].cert), "127.0.0.1"))
        assert not anonymous.is_established
        assert node.wait_idle()
    finally:
        node.stop()
    assert [p.stem for p in (out / "results").glob("*.json")] == [uids[0]]
    record = json.loads((out / "results" / f"{uids[0]}.json").read_text())
    assert record["sr"] and (out / record["sr"]).exists()


def test_forwarding_reaches_a_tls_pacs_only_with_its_ca(tmp_path: Path, pki: dict) -> None:
    port = free_port()
    received = tmp_path / "pacs"
    received.mkdir()
    pacs = subprocess.Popen([dcmtk("storescp"), "+tls", str(pki["pacs"].key), str(pki["pacs"].cert), "+cf",
                             str(pki["ca"].cert), "-aet", "PACS", "-od", str(received), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    report = write_dicom(tmp_path / "report.dcm", gradient(64, 64))
    try:
        time.sleep(0.5)
        target = parse_destination(f"PACS@127.0.0.1:{port}")
        wrong = Outbox(tmp_path / "wrong", [replace(target, tls=client_context(pki["other"].cert,
                                                                               pki["sender"].cert,
                                                                               pki["sender"].key))])
        right = Outbox(tmp_path / "right", [replace(target, tls=client_context(pki["ca"].cert, pki["sender"].cert,
                                                                               pki["sender"].key))])
        for outbox in (wrong, right):
            outbox.put(report)
            outbox.start()
        assert right.wait_empty(timeout=30)
        assert wrong.backlog() == 1  # the PACS's certificate is not of the CA it was told to trust
        wrong.stop()
        right.stop()
    finally:
        pacs.terminate()
        pacs.wait(timeout=30)
    assert len(list(received.iterdir())) == 1


def test_the_audit_trail_names_every_event_and_no_patient(tmp_path: Path, pki: dict) -> None:
    """Associations accepted and refused, instances received, results written, reports forwarded and refused,
    the configuration at start: one line each, images by UID, never a patient; `audit-log` prints them."""
    from pynetdicom import AE as Peer
    from pynetdicom import evt

    from cxr_edge.runtime.outputs.trail import read_trail
    from tests.factories import PATIENT_ID, PATIENT_NAME
    from tests.live.test_dicom_listener import associate
    from tests.processes import run_cli

    refusing = Peer(ae_title="PACS")  # a PACS that refuses everything it is sent
    refusing.add_supported_context("1.2.840.10008.5.1.4.1.1.88.34", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    pacs = refusing.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0xC001)])
    classifier = Classifier.open(tiny_onnx(tmp_path / "tiny.onnx", size=64), backend="ort")
    out = tmp_path / "out"
    node = DicomListener(out, classifier, port=0, host="127.0.0.1", allow=["XRAYROOM1"],
                         outputs=OutputOptions(sr="tid1500"),
                         forward=[parse_destination(f"PACS@127.0.0.1:{pacs.server_address[1]}")])
    node.start()
    try:
        image = pydicom.dcmread(write_dicom(tmp_path / "film.dcm", gradient(128, 128)))
        assoc = associate(node.port, ae_title="XRAYROOM1")
        assert assoc.send_c_store(image).Status == 0
        assoc.release()
        assert not associate(node.port, ae_title="STRANGER").is_established
        assert node.wait_idle()
        deadline = time.monotonic() + 30
        while not list((out / "outbox").glob("*/refused/*.reason.txt")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        node.stop()
        pacs.shutdown()
    trail = list(read_trail(out / "audit"))
    kinds = [e["event"] for e in trail]
    for kind in ("start", "association-accepted", "association-refused", "instance-received", "result-written",
                 "report-refused", "stop"):
        assert kind in kinds, (kind, kinds)
    received = next(e for e in trail if e["event"] == "instance-received")
    assert received["sop_instance_uid"] == image.SOPInstanceUID and received["calling_ae"] == "XRAYROOM1"
    assert next(e for e in trail if e["event"] == "association-refused")["calling_ae"] == "STRANGER"
    text = (out / "audit" / "audit.jsonl").read_text()
    assert PATIENT_NAME not in text and PATIENT_ID not in text and "Doe" not in text
    shown = run_cli("audit-log", out, "--since", "1h", "--event", "instance-received", env={"COLUMNS": "200"})
    assert shown.returncode == 0 and image.SOPInstanceUID in shown.stdout and "result-written" not in shown.stdout
