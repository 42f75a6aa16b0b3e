"""A DICOM Storage SCP beside the X-ray machine: store first, answer, then classify from a queue.

An instance is written to ``OUT_DIR/incoming/<SOP Instance UID>.dcm`` (synced) before the sender hears Success,
so an accepted image survives any crash; classification runs in worker threads, never inside the association
handler, so a slow model cannot stall a sender. For each instance a worker writes, in this order,
``results/<UID>.json`` (the result), ``sr/<UID>.sr.dcm`` (a Basic Text SR built from it), then moves the instance
to ``done/`` (or to ``failed/`` with ``<UID>.reason.txt``). A restart resumes everything still in
``incoming/``; an instance that already has a result is never classified twice, and a missing report is rebuilt
from its result.

A dataset that cannot be used (unreadable, no pixel data, UIDs missing or inconsistent) gets a failure status and
a copy in ``quarantine/`` with the reason; the listener keeps running. Logs name instances by UID only: patient
identifiers stay in the stored files and the SR, which must carry them to join the patient's study.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cxr_edge

from ..classifier import Classifier, Prepared
from ..errors import CxrEdgeError, first_line
from ..images import RAW_DETECTOR_WARNING
from ..model_file import file_sha256
from .files import move_to, remove_stale_temps, utc_now, write_atomic, write_json_atomic
from .results import LiveSummary, live_record
from .sr import build_sr

__all__ = ["DicomListener", "STORAGE_CLASSES", "TRANSFER_SYNTAXES", "Status"]

log = logging.getLogger(__name__)

STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
"""The SOP classes a chest radiograph arrives as; any other is refused at association and at C-STORE."""

FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"

TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",     # Explicit VR Little Endian
    "1.2.840.10008.1.2",       # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8 bit)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12 bit)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, first-order prediction (SV1)
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",     # RLE Lossless
]
"""What the runtime's loader decodes (pydicom with the pylibjpeg plugins)."""

WORKERS = min(4, os.cpu_count() or 1)
"""Instances classified at once: several associations deliver together, and each worker decodes in parallel."""

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Status:
    """C-STORE status codes (PS3.4 B.2.3) used by the listener."""

    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class _Received:
    uid: str
    path: Path
    arrived: str
    arrived_s: float
    calling_ae: str


class DicomListener:
    """Receive radiographs over DICOM and classify each one exactly once.

    Args:
        out_dir: where instances, results, reports and quarantined datasets go (created if missing).
        classifier: an opened classifier.
        port: TCP port to listen on (0 picks a free one; see `port` after `start`).
        ae_title: this node's application entity title.
        host: address to bind (default every interface).
        allow: calling AE titles allowed to associate; None allows any.
        keep_phi: also write patient name and ID into the JSON results.
        on_record: called from the worker with each result record as it is written.
    """

    def __init__(self, out_dir: str | Path, classifier: Classifier, *, port: int = 11112, ae_title: str = "CXREDGE",
                 host: str = "", allow: Sequence[str] | None = None, keep_phi: bool = False,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.out = Path(out_dir)
        self.incoming, self.done, self.failed = self.out / "incoming", self.out / "done", self.out / "failed"
        self.results, self.reports, self.quarantine = self.out / "results", self.out / "sr", self.out / "quarantine"
        if not 0 < len(ae_title.strip()) <= 16:
            raise CxrEdgeError(f"AE title {ae_title!r} must be 1 to 16 characters")
        self.classifier = classifier
        self.ae_title = ae_title.strip()
        self.host, self.requested_port = host, port
        self.allow = [a.strip() for a in allow] if allow else None
        self.keep_phi = keep_phi
        self.on_record = on_record
        self.summary = LiveSummary()
        self.quarantined = 0
        self._queue: queue.Queue[_Received | None] = queue.Queue()
        self._stopping = threading.Event()
        self._server: Any = None
        self._workers: list[threading.Thread] = []
        self._model_sha256 = file_sha256(classifier.path)
        self._version = cxr_edge.__version__  # looked up once: a metadata scan costs milliseconds
        self._counter = itertools.count(1)
        self._inflight: set[str] = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port actually listened on."""
        return int(self._server.server_address[1]) if self._server is not None else self.requested_port

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Resume unfinished instances, start the worker, then accept associations (returns at once)."""
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        for folder in (self.incoming, self.done, self.failed, self.results, self.reports, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(folder)
        leftovers = sorted(self.incoming.glob("*.dcm"))
        if leftovers:
            log.warning("finishing %d instance(s) an interrupted run left in %s", len(leftovers), self.incoming)
        for path in leftovers:
            self._inflight.add(path.stem)
            self._queue.put(_Received(path.stem, path, utc_now(), time.monotonic(), ""))
        self._workers = [threading.Thread(target=self._work, name=f"cxr-classify-{i}", daemon=True)
                         for i in range(WORKERS)]
        for worker in self._workers:
            worker.start()

        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = 16
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
        ae.maximum_pdu_size = 0  # no limit: fewer PDUs per large radiograph
        if self.allow:
            ae.require_calling_aet = self.allow
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        try:
            self._server = ae.start_server((self.host, self.requested_port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                                                         (evt.EVT_C_ECHO, lambda event: Status.SUCCESS)])
        except OSError as exc:
            self.stop()
            raise CxrEdgeError(f"cannot listen on port {self.requested_port}: {exc.strerror or exc}") from exc

    def stop(self, *, drain: bool = False) -> None:
        """Stop accepting, let the worker finish the instance in hand (or, with `drain`, the queue), then return.

        Instances still queued stay in ``incoming/`` and are finished by the next start.
        """
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if not drain:
            self._stopping.set()
        self._queue.put(None)
        for worker in self._workers:
            worker.join()
        self._workers = []

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every received instance has its result; True if that happened within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._inflight and self._queue.empty():
                    return True
            time.sleep(0.01)
        return False

    # --- receiving (association threads) -------------------------------------------------------------------
    def _on_store(self, event: Any) -> int:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        uid = str(request.AffectedSOPInstanceUID)
        calling = event.assoc.requestor.ae_title.strip() if hasattr(event.assoc.requestor.ae_title, "strip") \
            else str(event.assoc.requestor.ae_title)
        arrived_s, arrived = time.monotonic(), utc_now()
        if sop_class not in STORAGE_CLASSES:
            log.warning("refused instance %s from %s: SOP class %s is not a radiograph", uid, calling, sop_class)
            return Status.SOP_CLASS_NOT_SUPPORTED
        try:
            ds = event.dataset
            problem = _dataset_problem(ds, uid, sop_class)
        except Exception as exc:
            problem, ds = f"unreadable dataset: {first_line(exc)}", None
        if problem is not None or not _UID.match(uid):
            self._quarantine(event, uid, calling, problem or f"SOP Instance UID {uid[:80]!r} is not a valid UID")
            return Status.CANNOT_UNDERSTAND if ds is None else Status.DATASET_DOES_NOT_MATCH
        path = self.incoming / f"{uid}.dcm"
        with self._lock:
            duplicate = uid in self._inflight or (self.results / f"{uid}.json").exists()
            if not duplicate:
                self._inflight.add(uid)
        if duplicate:
            log.info("instance %s from %s was already received; kept the first copy", uid, calling)
            return Status.SUCCESS
        self.classifier.warm()  # while the instance is stored and decoded
        try:
            write_atomic(path, event.encoded_dataset())
        except OSError as exc:
            with self._lock:
                self._inflight.discard(uid)
            log.error("cannot store instance %s: %s", uid, exc)
            return Status.OUT_OF_RESOURCES
        self._queue.put(_Received(uid, path, arrived, arrived_s, calling))
        return Status.SUCCESS

    def _quarantine(self, event: Any, uid: str, calling: str, reason: str) -> None:
        """Keep a bad dataset's bytes and the reason; never raises (the sender still gets its status)."""
        self.quarantined += 1
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{next(self._counter):06d}"
        try:
            try:
                data = event.encoded_dataset()
            except Exception:
                data = event.request.DataSet.getvalue()
            write_atomic(self.quarantine / f"{name}.dcm", data)
            write_atomic(self.quarantine / f"{name}.reason.txt",
                         f"SOP Instance UID {uid[:80]} from {calling}: {reason}\n".encode())
        except Exception as exc:
            log.error("cannot quarantine a bad dataset: %s", exc)
        log.warning("quarantined instance %s from %s: %s", uid[:80], calling, reason)

    # --- classifying (worker thread) -----------------------------------------------------------------------
    def _work(self) -> None:
        """One of `WORKERS` threads: take the next instance, decode, classify, write its results.

        Decoding (C decoders, GIL released) is the larger part of the work and runs in parallel on every worker;
        only inference is serialised (the classifier's own lock), because an engine's request object is not shared
        safely. An engine that has been idle is woken while the instance decodes (`Classifier.warm`).
        """
        while not self._stopping.is_set():
            item = self._queue.get()
            if item is None:
                self._queue.put(None)  # let the other workers see the end too
                return
            try:
                self._classify(item, *self._prepare(item))
            except Exception as exc:  # disk full and the like: keep the instance in incoming/ for a restart
                log.error("instance %s: cannot write its result: %s", item.uid, first_line(exc))
            finally:
                with self._lock:
                    self._inflight.discard(item.uid)

    def _prepare(self, item: _Received) -> tuple[Prepared, Any]:
        """Decode and preprocess one stored instance, and read its header for the report."""
        import pydicom

        prepared = self.classifier.prepare(item.path)
        try:
            header = pydicom.dcmread(item.path, stop_before_pixels=True)
        except Exception:  # the prepared input carries the reason
            header = pydicom.Dataset()
        return prepared, header

    def _classify(self, item: _Received, prepared: Prepared, header: Any) -> None:
        result_path = self.results / f"{item.uid}.json"
        if result_path.exists():
            record = json.loads(result_path.read_text())
        else:
            prediction = self.classifier.infer([prepared])[0]
            warnings = list(prediction.warnings)
            if str(header.get("SOPClassUID", "")) == FOR_PROCESSING and RAW_DETECTOR_WARNING not in warnings:
                warnings.append(RAW_DETECTOR_WARNING)
                prediction.warnings = tuple(warnings)
            sr_name = f"{item.uid}.sr.dcm" if prediction.error is None else None
            folder = self.failed if prediction.error else self.done
            extra: dict[str, Any] = {
                "sop_instance_uid": item.uid, "sop_class": STORAGE_CLASSES.get(str(header.get("SOPClassUID", ""))),
                "study_instance_uid": str(header.get("StudyInstanceUID", "")),
                "series_instance_uid": str(header.get("SeriesInstanceUID", "")),
                "calling_ae": item.calling_ae, "moved_to": f"{folder.name}/{item.uid}.dcm",
                "sr": f"sr/{sr_name}" if sr_name else None,
                "arrival_to_result_ms": round((time.monotonic() - item.arrived_s) * 1000, 3)}
            if self.keep_phi and prediction.patient:
                extra["patient"] = prediction.patient
            record = live_record(prediction, path=f"incoming/{item.uid}.dcm", sha256=file_sha256(item.path),
                                 arrived=item.arrived, finished=utc_now(), model=self.classifier.path.name, **extra)
            write_json_atomic(result_path, record)
            self.summary.add(record, record["arrival_to_result_ms"])
        if record["sr"] and not (self.out / record["sr"]).exists():  # also repairs a crash after the result
            self._write_sr(header, record, self.out / record["sr"])
        target = self.out / record["moved_to"]
        if record["error"] is not None:
            write_atomic(target.with_name(f"{item.uid}.reason.txt"),
                         f"SOP Instance UID {item.uid}: {record['error']}\n".encode())
        move_to(item.path, target)
        if self.on_record is not None:
            self.on_record(record)

    def _write_sr(self, header: Any, record: dict[str, Any], path: Path) -> None:
        import io

        import pydicom

        report = build_sr(header, label=record["label"], probabilities=record["probabilities"],
                          model_name=self.classifier.path.name, model_sha256=self._model_sha256,
                          software_version=self._version, warnings=record["warnings"],
                          status=record.get("status", "classified"))
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, report, enforce_file_format=True)
        write_atomic(path, buffer.getvalue())


def _dataset_problem(ds: Any, uid: str, sop_class: str) -> str | None:
    """Why a received dataset cannot be stored as a radiograph, or None."""
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not str(ds.get(keyword, "") or ""):
            return f"the dataset has no {keyword}"
    if str(ds.SOPInstanceUID) != uid:
        return "the dataset's SOP Instance UID differs from the one in the C-STORE request"
    if str(ds.get("SOPClassUID", "")) != sop_class:
        return "the dataset's SOP Class UID differs from the one in the C-STORE request"
    if "PixelData" not in ds:
        return "the dataset has no pixel data"
    return None
