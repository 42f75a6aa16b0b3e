"""A DICOM Storage SCP beside the X-ray machine: store first, answer, then classify from a queue.

An instance is written to ``OUT_DIR/incoming/<SOP Instance UID>.dcm`` (synced) before the sender hears Success,
so an accepted image survives any crash; classification runs in worker threads, never inside the association
handler, so a slow model cannot stall a sender. For each instance a worker writes, in this order,
``cam/<UID>.cam.png`` and ``sc/<UID>.sc.dcm`` (the heatmap, as a picture and as a Secondary Capture, when asked
for), ``results/<UID>.json`` (the result), ``sr/<UID>.sr.dcm`` (a coded TID 1500 SR or a Basic Text SR built from
it), ``fhir/<UID>.json`` (when asked for), queues the reports for the PACS (`outbox`), then moves the instance
to ``done/`` (or to ``failed/`` with ``<UID>.reason.txt``). ``status.json`` says what the listener is doing. A
restart resumes everything still in ``incoming/``; an instance that already has a result is never classified
twice, and a missing report is rebuilt from its result.

A dataset that cannot be used (unreadable, no pixel data, UIDs missing or inconsistent) gets a failure status and
a copy in ``quarantine/`` with the reason; the listener keeps running. An instance sent again with the same
content is kept once; a different dataset that reuses a SOP Instance UID already received is stored and
classified under ``<UID>_2`` (``_3``...) with a warning, never dropped. Logs name instances by UID only: patient
identifiers stay in the stored files and the SR, which must carry them to join the patient's study.

Connections are bounded so that idle or hostile peers cannot lock real senders out: at most `PER_PEER` open
connections per network address, `ACSE_TIMEOUT_S` to send an association request after connecting, and
`NETWORK_TIMEOUT_S` of silence on an association before it is aborted. Calling AE titles are compared as
PS3.5 (AE value representation) and PS3.8 (9.3.2) define them: leading and trailing spaces are not significant,
everything else is exact and case-sensitive, and a title with a backslash or a control character is invalid.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import queue
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CxrEdgeError, first_line
from ..files import move_to, private_dir, remove_stale_temps, utc_now, warn_if_open, write_atomic
from ..model.classifier import Classifier, Prepared
from ..model.model_file import file_sha256
from ..monitoring.drift import DriftConfig
from ..monitoring.live import DriftStep, open_monitor
from ..outputs.ae_title import valid_ae_title
from ..outputs.health import Heartbeat
from ..outputs.outbox import Destination, Outbox
from ..outputs.records import LiveSummary, live_record
from ..outputs.reports import SR_KINDS
from ..outputs.steps import Outcome, OutputOptions, live_steps, study_header_of
from ..outputs.trail import AuditTrail
from ..reading import codecs
from ..reading.dicom_image import RAW_DETECTOR_WARNING, quiet_pydicom

__all__ = ["DicomListener", "SR_KINDS", "STORAGE_CLASSES", "TRANSFER_SYNTAXES", "Status", "valid_ae_title", "PER_PEER"]

log = logging.getLogger(__name__)

STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
"""The SOP classes a chest radiograph arrives as; any other is refused at association and at C-STORE."""

FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"

TRANSFER_SYNTAXES = list(codecs.TRANSFER_SYNTAXES)
"""What the runtime's loader decodes: uncompressed, RLE, JPEG (baseline, extended, lossless), JPEG-LS, JPEG 2000 and
High-Throughput JPEG 2000 (`cxr_edge.runtime.reading.codecs`)."""

MAX_ASSOCIATIONS = 32
"""Associations open at once, from every peer together."""

PER_PEER = 4
"""Connections open at once from one network address (a console sends over one or two)."""

ACSE_TIMEOUT_S = 10.0
"""Seconds a new connection has to send its association request; an idle socket is closed after this."""

NETWORK_TIMEOUT_S = 30.0
"""Seconds without a PDU after which an association is aborted (a sender gone silent holds no slot)."""

DIMSE_TIMEOUT_S = 60.0
"""Seconds to wait for the rest of a DIMSE message once it has started (a large radiograph on a slow link)."""

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


def ae_title_from_pdu(raw: bytes) -> str | None:
    """The calling AE title as it was sent (16 bytes of the A-ASSOCIATE-RQ), without its non-significant spaces;
    None if it is not valid. pynetdicom strips any whitespace, so a tab or newline would pass there."""
    try:
        title = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return title.strip(" ") if valid_ae_title(title) is None else None


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
        outputs: what to write per instance besides its record, as every mode takes it: the report's kind (one of
            `SR_KINDS`), the heatmap as PNG and as Secondary Capture, FHIR, patient identifiers in the records.
        on_record: called from the worker with each result record as it is written.
        forward: send every report (and heatmap) to these Storage SCPs from a durable outbox.
        tls: an `ssl.SSLContext` (`cxr_edge.runtime.outputs.tls.server_context`): associations only over TLS, with
            client certificates where it requires them; None: plain TCP.
    """

    def __init__(self, out_dir: str | Path, classifier: Classifier, *, port: int = 11112, ae_title: str = "CXREDGE",
                 host: str = "", allow: Sequence[str] | None = None,
                 outputs: OutputOptions = OutputOptions(sr="tid1500"),
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 forward: Sequence[Destination] = (), tls: Any = None) -> None:
        if outputs.sr not in SR_KINDS:
            raise CxrEdgeError(f"SR kind {outputs.sr!r}: expected one of {', '.join(SR_KINDS)}")
        if (outputs.sc or outputs.cam) and not classifier.has_cam:
            raise CxrEdgeError(f"{classifier.path}: the model has no 'cam' output, so it cannot draw heatmaps")
        for title in (ae_title, *(allow or ())):
            if (problem := valid_ae_title(title)) is not None:
                raise CxrEdgeError(f"AE title {title!r} is not valid: {problem}")
        self.out = Path(out_dir)
        self.incoming, self.done, self.failed = self.out / "incoming", self.out / "done", self.out / "failed"
        self.results, self.quarantine = self.out / "results", self.out / "quarantine"
        self.options = outputs
        self.trail = AuditTrail(self.out / "audit")
        self.outbox = Outbox(self.out, list(forward), calling_ae=ae_title.strip(" "), trail=self.trail) \
            if forward else None
        self.drift = open_monitor(self.out, DriftConfig.for_baseline(outputs.drift_baseline))
        self.heartbeat = Heartbeat(self.out, "dicom-listen", self._snapshot)
        self.outputs = live_steps(self.out, outputs, classifier, outbox=self.outbox, heartbeat=self.heartbeat,
                                  trail=self.trail, watchers=[DriftStep(self.drift, self.out, trail=self.trail)],
                                  record_path=lambda outcome: self.results / f"{outcome.name}.json")
        self._last_arrival: str | None = None
        self._last_result: str | None = None
        self.classifier = classifier
        self.ae_title = ae_title.strip(" ")
        self.host, self.requested_port = host, port
        self.allow = frozenset(a.strip(" ") for a in allow) if allow else None
        self.on_record = on_record
        self.tls = tls
        self.summary = LiveSummary()
        self.quarantined = 0
        self._queue: queue.Queue[_Received | None] = queue.Queue()
        self._stopping = threading.Event()
        self._server: Any = None
        self._workers: list[threading.Thread] = []
        self._counter = itertools.count(1)
        self._inflight: dict[str, str] = {}  # stored name -> SHA-256 of the instances not yet finished
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

        quiet_pydicom()  # datasets are decoded on receipt, before cxr-edge's loader sees them

        folders = [self.incoming, self.done, self.failed, self.results, self.quarantine, self.out / "sr"]
        folders += [self.out / "sc"] * self.options.sc + [self.out / "cam"] * (self.options.sc or self.options.cam)
        folders += [self.options.fhir] if self.options.fhir is not None else []
        warn_if_open(self.out)
        for folder in folders:
            private_dir(folder)
            remove_stale_temps(folder)
        leftovers = sorted(self.incoming.glob("*.dcm"))
        if leftovers:
            log.warning("finishing %d instance(s) an interrupted run left in %s", len(leftovers), self.incoming)
        for path in leftovers:
            self._inflight[path.stem] = file_sha256(path)
            self._queue.put(_Received(path.stem, path, utc_now(), time.monotonic(), ""))
        self._workers = [threading.Thread(target=self._work, name=f"cxr-classify-{i}", daemon=True)
                         for i in range(WORKERS)]
        for worker in self._workers:
            worker.start()

        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = MAX_ASSOCIATIONS
        ae.acse_timeout, ae.network_timeout, ae.dimse_timeout = ACSE_TIMEOUT_S, NETWORK_TIMEOUT_S, DIMSE_TIMEOUT_S
        ae.maximum_pdu_size = 0  # no limit: fewer PDUs per large radiograph
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: Status.SUCCESS),
                    (evt.EVT_DATA_RECV, _keep_calling_title), (evt.EVT_REQUESTED, self._on_request),
                    (evt.EVT_ACCEPTED, self._on_accepted)]
        try:
            self._server = ae.make_server((self.host, self.requested_port), evt_handlers=handlers,
                                          server_class=_bounded_server_class(), ssl_context=self.tls)
        except OSError as exc:
            self.stop()
            raise CxrEdgeError(f"cannot listen on port {self.requested_port}: {exc.strerror or exc}") from exc
        self._server.trail = self.trail  # connections refused before any association are audited too
        threading.Thread(target=self._server.serve_forever, name="cxr-dicom-accept", daemon=True).start()
        self.trail.record("start", mode="dicom-listen", ae_title=self.ae_title, host=self.host, port=self.port,
                          tls=self.tls is not None, client_certificates=self.tls is not None and
                          self.tls.verify_mode == ssl.CERT_REQUIRED, allow=sorted(self.allow or ()),
                          model=self.classifier.path.name, sr=self.options.sr, sc=self.options.sc,
                          fhir=self.options.fhir is not None, keep_phi=self.options.keep_phi,
                          forward=[str(d) for d in self.outbox.destinations] if self.outbox else [])
        if self.outbox is not None:
            self.outbox.start()
        self.heartbeat.start()

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
        if self.outbox is not None:
            self.outbox.stop()
        self.heartbeat.stop()
        self.trail.record("stop", mode="dicom-listen", counts=self.summary.as_dict(), quarantined=self.quarantined)

    def _snapshot(self) -> dict[str, Any]:
        """What `status.json` says beside mode and times (no patient identifier)."""
        with self._lock:
            in_flight = len(self._inflight)
        return {"listening": f"{self.ae_title} on port {self.port}", "model": self.classifier.path.name,
                "queue": in_flight, "last_arrival": self._last_arrival, "last_result": self._last_result,
                "counts": self.summary.as_dict(), "quarantined": self.quarantined, "drift": self.drift.status(),
                "outbox_backlog": self.outbox.backlog() if self.outbox is not None else None}

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
    def _on_accepted(self, event: Any) -> None:
        self.trail.record("association-accepted", calling_ae=getattr(event.assoc, "cxr_calling_title", None),
                          peer=str(event.assoc.requestor.address), tls=self.tls is not None)

    def _on_request(self, event: Any) -> None:
        """Refuse an association whose calling AE title is invalid, or not on the allow list."""
        calling = getattr(event.assoc, "cxr_calling_title", None)
        if calling is None or (self.allow is not None and calling not in self.allow):
            shown = calling if calling is not None else "(an invalid AE title)"
            reason = "not on the allow list" if calling is not None else "invalid calling AE title"
            log.warning("refused an association from %s calling as %s: %s", event.assoc.requestor.address, shown,
                        reason)
            self.trail.record("association-refused", calling_ae=shown, peer=str(event.assoc.requestor.address),
                              reason=reason)
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected permanent, calling AE title not recognised
            event.assoc.kill()  # as pynetdicom's own rejection does: waits until the reply has been sent

    def _on_store(self, event: Any) -> int:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        uid = str(request.AffectedSOPInstanceUID)
        calling = getattr(event.assoc, "cxr_calling_title", None) or str(event.assoc.requestor.ae_title)
        arrived_s, arrived = time.monotonic(), utc_now()
        self._last_arrival = arrived
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
        self.classifier.warm()  # while the instance is stored and decoded
        data = event.encoded_dataset()
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            name, seen = self._name_for(uid, digest)
            if not seen:
                self._inflight[name] = digest
        if seen:
            log.info("instance %s from %s was already received with the same content; kept the first copy", uid,
                     calling)
            return Status.SUCCESS
        if name != uid:
            log.warning("instance %s from %s reuses a SOP Instance UID already received with different content: "
                        "stored and classified as %s", uid, calling, name)
        path = self.incoming / f"{name}.dcm"
        try:
            write_atomic(path, data)
        except OSError as exc:
            with self._lock:
                self._inflight.pop(name, None)
            log.error("cannot store instance %s: %s", uid, exc)
            return Status.OUT_OF_RESOURCES
        self.trail.record("instance-received", sop_instance_uid=uid, stored_as=name, sha256=digest, calling_ae=calling,
                          peer=str(event.assoc.requestor.address), sop_class=sop_class)
        self._queue.put(_Received(name, path, arrived, arrived_s, calling))
        return Status.SUCCESS

    def _name_for(self, uid: str, digest: str) -> tuple[str, bool]:
        """The name to store an instance under (its UID, or ``UID_2``... if the UID was already used for other
        content), and whether this very content was already received. Called with the lock held."""
        for n in itertools.count(1):
            name = uid if n == 1 else f"{uid}_{n}"
            known = self._inflight.get(name) or self._stored_digest(name)
            if known is None:
                return name, False
            if known == digest:
                return name, True
        raise AssertionError("unreachable")

    def _stored_digest(self, name: str) -> str | None:
        result = self.results / f"{name}.json"
        if result.exists():
            try:
                return str(json.loads(result.read_text())["sha256"])
            except (OSError, ValueError, KeyError):
                return ""
        incoming = self.incoming / f"{name}.dcm"
        return file_sha256(incoming) if incoming.exists() else None

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
        self.trail.record("instance-received", sop_instance_uid=uid[:80], calling_ae=calling,
                          peer=str(event.assoc.requestor.address), quarantined=reason)

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
                # Only an OS error's own words: other messages may quote header values (patient identifiers).
                reason = f"{exc.strerror or exc} ({type(exc).__name__})" if isinstance(exc, OSError) \
                    else type(exc).__name__
                log.error("instance %s: cannot write its result: %s", item.uid, reason)
            finally:
                with self._lock:
                    self._inflight.pop(item.uid, None)

    def _prepare(self, item: _Received) -> tuple[Prepared, Any]:
        """Decode and preprocess one stored instance, and read its header for the record and the reports."""
        import pydicom

        prepared = self.classifier.prepare(item.path, keep_display=self.options.sc or self.options.cam)
        try:
            header = pydicom.dcmread(item.path, stop_before_pixels=True)
        except Exception:  # the prepared input carries the reason
            header = pydicom.Dataset()
        return prepared, header

    def _classify(self, item: _Received, prepared: Prepared, header: Any) -> None:
        result_path = self.results / f"{item.uid}.json"
        usable = study_header_of(header) if "PixelData" in header or "SOPInstanceUID" in header else None
        if result_path.exists():  # an earlier run's result: only its outputs that a crash cut short are written
            record = json.loads(result_path.read_text())
            self._last_result = record.get("finished")
            outcome = Outcome(None, record, item.uid, item.path, self.classifier.contract, usable)
            self.outputs.deliver(outcome, recorded=True)
        else:
            prediction = self.classifier.infer([prepared], cam=self.options.sc or self.options.cam)[0]
            record = self._record(item, prediction, header)
            self._last_result = record["finished"]
            self.summary.add(record, record["arrival_to_result_ms"])
            self.outputs.deliver(Outcome(prediction, record, item.uid, item.path, self.classifier.contract, usable))
        target = self.out / record["moved_to"]
        if record["error"] is not None:
            write_atomic(target.with_name(f"{item.uid}.reason.txt"),
                         f"SOP Instance UID {item.uid}: {record['error']}\n".encode())
        move_to(item.path, target)
        if self.on_record is not None:
            self.on_record(record)

    def _record(self, item: _Received, prediction: Any, header: Any) -> dict[str, Any]:
        """The live record of an instance: the prediction, the DICOM identity and how it arrived."""
        warnings = list(prediction.warnings)
        if str(header.get("SOPClassUID", "")) == FOR_PROCESSING and RAW_DETECTOR_WARNING not in warnings:
            warnings.append(RAW_DETECTOR_WARNING)
        uid = str(header.get("SOPInstanceUID", "") or item.uid)
        if item.uid != uid:
            warnings.append(f"its SOP Instance UID was already used for a different dataset; stored as {item.uid}")
        prediction.warnings = tuple(warnings)
        folder = self.failed if prediction.error else self.done
        extra: dict[str, Any] = {
            "sop_instance_uid": uid, "stored_as": item.uid,
            "sop_class": STORAGE_CLASSES.get(str(header.get("SOPClassUID", ""))),
            "study_instance_uid": str(header.get("StudyInstanceUID", "")),
            "series_instance_uid": str(header.get("SeriesInstanceUID", "")),
            "calling_ae": item.calling_ae, "moved_to": f"{folder.name}/{item.uid}.dcm",
            "arrival_to_result_ms": round((time.monotonic() - item.arrived_s) * 1000, 3)}
        if self.options.keep_phi and prediction.patient:
            extra["patient"] = prediction.patient
        return live_record(prediction, path=f"incoming/{item.uid}.dcm", sha256=file_sha256(item.path),
                           arrived=item.arrived, finished=utc_now(), model=self.classifier.path.name, **extra)


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


def _keep_calling_title(event: Any) -> None:
    """Keep the calling AE title of an A-ASSOCIATE-RQ as sent (bytes 26-41 of the PDU), before it is decoded."""
    data = event.data
    if data[:1] == b"\x01" and len(data) >= 42:
        event.assoc.cxr_calling_title = ae_title_from_pdu(data[26:42])


def _bounded_server_class() -> type:
    import socketserver

    from pynetdicom.transport import ThreadedAssociationServer

    class BoundedServer(ThreadedAssociationServer):
        """The association server, refusing a connection beyond `PER_PEER` open ones from the same address
        before any thread or association is spent on it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._open: dict[int, tuple[str, Any]] = {}  # id of each open connection's socket -> (host, socket)
            self._peer_lock = threading.Lock()
            super().__init__(*args, **kwargs)

        def verify_request(self, request: Any, client_address: Any) -> bool:
            host = str(client_address[0])
            with self._peer_lock:
                self._open = {key: (peer, sock) for key, (peer, sock) in self._open.items() if sock.fileno() != -1}
                if sum(peer == host for peer, _ in self._open.values()) >= PER_PEER:
                    log.warning("refused a connection from %s: it already holds %d open", host, PER_PEER)
                    if getattr(self, "trail", None) is not None:
                        self.trail.record("association-refused", peer=host,
                                          reason=f"already {PER_PEER} open connections from this address")
                    return False
                self._open[id(request)] = (host, request)
            return True

        def shutdown(self) -> None:
            """Stop serving and close the socket (the server was made, not started, by the AE: it does not list
            it among its own)."""
            socketserver.TCPServer.shutdown(self)
            self.server_close()

        def shutdown_request(self, request: Any) -> None:
            with self._peer_lock:
                self._open.pop(id(request), None)
            super().shutdown_request(request)

    return BoundedServer
