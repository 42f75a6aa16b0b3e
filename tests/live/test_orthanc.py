"""cxr-edge inside a real Orthanc (Debian's, with its Python and DICOMweb plugins), started by the test on
loopback ports with a temporary storage folder: films sent by C-STORE get coded SRs in their studies, and an
Orthanc killed with SIGKILL mid-queue loses nothing and doubles nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cxr_edge.runtime.live.orthanc import write_config
from cxr_edge.runtime.reading.images import load_image
from tests.factories import PATIENT_ID, PATIENT_NAME, dicom_dataset

ORTHANC = "/usr/sbin/Orthanc"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR (TID 1500)
FILMS = 10
DEADLINE_S = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Orthanc:
    """One Orthanc process on a configuration `cxr-edge orthanc-config` wrote."""

    def __init__(self, folder: Path, model: Path | None) -> None:
        self.http, self.dicom = _free_port(), _free_port()
        self.config = write_config(folder, http_port=self.http, dicom_port=self.dicom, aet="ORTHANC",
                                   model=str(model) if model else None, backend="ort")
        self.log = folder / "orthanc.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Orthanc:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.get("/cxr-edge/status")
                return self
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"Orthanc did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=10) as answer:
            return json.loads(answer.read())

    def instances_of_class(self, sop_class: str) -> list[str]:
        found = []
        for instance in self.get("/instances"):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/instances/{instance}/metadata/SopClassUid",
                                        timeout=10) as answer:
                if answer.read().decode().strip() == sop_class:
                    found.append(instance)
        return found

    def wait_until_idle(self, seconds: float = DEADLINE_S) -> dict:
        """The worker's status once its queue is empty: every queued film classified and its reports stored
        (a report is stored before its queue entry is dropped, so nothing can arrive after this)."""
        deadline = time.monotonic() + seconds
        status = self.get("/cxr-edge/status")
        while status["queue"] and time.monotonic() < deadline:
            time.sleep(0.5)
            status = self.get("/cxr-edge/status")
        return status

    def wait_for_reports(self, count: int, seconds: float = DEADLINE_S) -> list[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            reports = self.instances_of_class(SR_CLASS)
            if len(reports) >= count:
                return reports
            time.sleep(0.5)
        return self.instances_of_class(SR_CLASS)


@pytest.fixture()
def films(data_dirs, tmp_path) -> list[Path]:
    """Ten real chest films as 12-bit CR DICOM with a patient's name and ID, each its own study."""
    from cxr_edge.runtime.evaluation.dataset import scan_dataset

    folder = tmp_path / "films"
    folder.mkdir()
    paths = []
    for index, sample in enumerate(scan_dataset(data_dirs).samples[::97][:FILMS]):
        stored = np.rint(load_image(sample.path) * 4095).astype(np.uint16)
        ds = dicom_dataset(stored, bits_stored=12, modality="CR", sop_class="1.2.840.10008.5.1.4.1.1.1")
        paths.append(folder / f"{index:02d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.fixture()
def orthanc(tmp_path):
    server = Orthanc(tmp_path / "orthanc", None)
    yield server
    server.stop()


def _send(server: Orthanc, paths: list[Path]) -> None:
    subprocess.run(["storescu", "-aec", "ORTHANC", "127.0.0.1", str(server.dicom), *map(str, paths)], check=True,
                   capture_output=True, timeout=120)


def test_films_sent_to_orthanc_get_coded_reports_in_their_studies(orthanc, films):
    orthanc.start()
    started = time.monotonic()
    _send(orthanc, films)
    reports = orthanc.wait_for_reports(FILMS)
    assert len(reports) == FILMS and time.monotonic() - started < DEADLINE_S
    for report in reports:
        study = orthanc.get(f"/instances/{report}/study")["ID"]
        assert len(orthanc.get(f"/studies/{study}/instances")) == 2  # the film and its report
    status = orthanc.get("/cxr-edge/status")
    assert status["counts"]["classified"] + status["counts"]["uncertain"] + status["counts"]["rejected"] == FILMS
    assert all(row["finding"] or row["status"] == "rejected" for row in status["latest"])
    for text in (orthanc.log.read_text(errors="replace"), json.dumps(status)):
        assert PATIENT_ID not in text and PATIENT_NAME.split("^")[0] not in text


def test_an_orthanc_killed_mid_queue_ends_with_exactly_one_report_per_film(orthanc, films):
    orthanc.start()
    _send(orthanc, films)
    orthanc.kill()  # at once: whatever the worker had reached (often mid-queue), the end must be the same
    orthanc.start()
    orthanc.wait_for_reports(FILMS, seconds=2 * DEADLINE_S)  # a loaded machine: Orthanc restarts, the model loads
    status = orthanc.wait_until_idle(seconds=2 * DEADLINE_S)
    reports = orthanc.instances_of_class(SR_CLASS)
    results = list((orthanc.config.parent / "cxr-edge" / "results").glob("*.json"))
    queued = list((orthanc.config.parent / "cxr-edge" / "queue").glob("*.json"))
    said = f"reports {len(reports)}, results {len(results)}, queued {len(queued)}, status {status}"
    assert (len(reports), len(results), queued) == (FILMS, FILMS, []), said


def test_watch_sends_its_reports_to_orthanc_by_stow_rs(orthanc, films, tmp_path):
    """DICOMweb out: the same durable outbox as C-STORE, to Orthanc's STOW-RS endpoint."""
    from cxr_edge.runtime.live.watch import FolderWatcher
    from cxr_edge.runtime.model.classifier import Classifier
    from cxr_edge.runtime.outputs.steps import OutputOptions
    from cxr_edge.runtime.outputs.stow import parse_web_destination

    orthanc.start()
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    for path in films[:3]:
        (inbox / path.name).write_bytes(path.read_bytes())
    destination = parse_web_destination(f"http://127.0.0.1:{orthanc.http}/dicom-web")
    FolderWatcher(inbox, out, Classifier.open(None, backend="ort"), outputs=OutputOptions(sr="tid1500"),
                  settle_s=0.05, forward=[destination]).run(once=True)
    (status,) = [json.loads(p.read_text()) for p in (out / "outbox").glob("*/status.json")]
    assert (status["sent"], status["refused"], status["backlog"]) == (3, 0, 0)
    assert len(orthanc.instances_of_class(SR_CLASS)) == 3
    trail = (out / "audit" / "audit.jsonl").read_text()
    assert trail.count('"report-forwarded"') == 3 and PATIENT_NAME.split("^")[0] not in trail


def test_predict_sends_its_reports_by_stow_rs_and_says_so(orthanc, films, tmp_path):
    orthanc.start()
    result = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "predict", *map(str, films[:2]), "--sr",
                             str(tmp_path / "sr"), "--stow", f"http://127.0.0.1:{orthanc.http}/dicom-web",
                             "--format", "jsonl"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 sent, 0 refused, 0 waiting" in result.stderr
    assert len(orthanc.instances_of_class(SR_CLASS)) == 2


def test_score_archive_over_orthancs_dicomweb_equals_the_same_files_in_a_folder(orthanc, films, tmp_path):
    """DICOMweb in: QIDO-RS finds the films, WADO-RS fetches them as stored, Ray scores them as from a folder; a
    second run fetches and scores nothing."""
    import pydicom

    from cxr_edge.runtime.model.model_file import resolve_model
    from cxr_edge.runtime.scale.archive import read_results, score_archive
    from tests.numerics import int8_rerun_bound

    bound = int8_rerun_bound(resolve_model(None))
    orthanc.start()
    _send(orthanc, films[:4])
    source = f"dicomweb+http://127.0.0.1:{orthanc.http}/dicom-web"
    web = score_archive(source, tmp_path / "web", backend="ort", workers=1, batch_size=2)
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in films[:4]:
        (folder / path.name).write_bytes(path.read_bytes())
    local = score_archive(folder, tmp_path / "local", backend="ort", workers=1, batch_size=2)
    assert (web.inputs, web.scored, local.scored) == (4, 4, 4)
    by_uid = {}
    for row in read_results(tmp_path / "local").to_pylist():
        by_uid[str(pydicom.dcmread(row["path"], stop_before_pixels=True).SOPInstanceUID)] = row
    for row in read_results(tmp_path / "web").to_pylist():
        twin = by_uid[row["path"].rsplit("/", 1)[-1]]
        assert row["label"] == twin["label"]  # Orthanc rewrites the file meta header: the pixels are the same
        assert all(abs(row[key] - twin[key]) <= bound for key in row if key.startswith("p_"))
    again = score_archive(source, tmp_path / "web", backend="ort", workers=1, batch_size=2)
    assert (again.inputs, again.skipped, again.scored) == (4, 4, 0)
