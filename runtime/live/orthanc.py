"""Classification inside Orthanc: a live mode whose arrivals are the instances Orthanc stores.

Loaded by Orthanc's Python plugin (`cxr-edge orthanc-config` writes the configuration and the loader). Orthanc
signals every new instance through its change callback, which only wakes a worker thread: never blocking Orthanc,
and never calling its API from a callback that runs while Orthanc stores (where the plugin's lock and Orthanc's
database lock could wait on each other; the stored-instance callback did, here). The worker reads Orthanc's
change log (``/changes``) from the last sequence number it has taken, which Orthanc keeps in its
own database, and turns every new CR or DX instance into a queue file (``OUT/queue/``) before it moves that number
on: an instance stored while the plugin was down, or stored just before Orthanc was killed, is still found. Each
queued instance is fetched through Orthanc's API, classified, and goes through the same output steps as every
other mode (record, coded SR or Basic Text SR, Secondary Capture when asked, drift, heartbeat); the reports are
stored back into the same study through Orthanc's API. Results are keyed by SOP Instance UID and the model's
hash, so a restart finishes what was cut short and classifies nothing twice; Orthanc keeps one copy of an SR by
its SOP Instance UID, so a report sent twice is stored once.

``GET /cxr-edge/status`` answers what ``status.json`` says, with the last results; no log line names a patient.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from ..files import private_dir, replace_json, utc_now, write_atomic
from ..model.classifier import Classifier
from ..model.model_file import file_sha256
from ..monitoring.drift import DriftConfig
from ..monitoring.live import DriftStep, open_monitor
from ..outputs.health import Heartbeat
from ..outputs.records import LiveSummary, live_record
from ..outputs.steps import Outcome, OutputOptions, Step, live_steps, study_header_of
from ..outputs.trail import AuditTrail

__all__ = ["OrthancMode", "RADIOGRAPH_CLASSES", "register", "write_config"]

log = logging.getLogger(__name__)

RADIOGRAPH_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
                                "1.2.840.10008.5.1.4.1.1.1.1.1"})
"""CR, DX for presentation and DX for processing: what is classified (never the SR or SC this mode stores)."""
POLL_S = 1.0
"""The worker also looks at the change log this often, in case a wake-up was missed."""
LATEST = 20


class StoreInOrthanc(Step):
    """Store the input's reports (SR, Secondary Capture) in its study through Orthanc's own API."""

    def __init__(self, api: Any, out: Path) -> None:
        self.api, self.out = api, out

    def finish(self, outcome: Outcome) -> None:
        for key in ("sr", "sc"):
            name = outcome.record.get(key)
            if name:
                self.api.RestApiPost("/instances", (self.out / name).read_bytes())


class OrthancMode:
    """The worker behind the plugin: Orthanc's change log in, reports back into Orthanc.

    Args:
        api: the ``orthanc`` module of the Python plugin (RestApiGet, RestApiPost).
        out: the mode's folder (queue, results, reports, status.json, audit).
        classifier: the model.
        options: what to write, as in the other live modes (``sr`` and ``sc``).
    """

    def __init__(self, api: Any, out: Path, classifier: Classifier, options: OutputOptions) -> None:
        self.api, self.out, self.classifier, self.options = api, Path(out), classifier, options
        self.queue, self.incoming, self.results = self.out / "queue", self.out / "incoming", self.out / "results"
        for folder in (self.out, self.queue, self.incoming, self.results):
            private_dir(folder)
        self.model_key = file_sha256(classifier.path)[:16]
        self.trail = AuditTrail(self.out / "audit")
        self.drift = open_monitor(self.out, DriftConfig.for_baseline(options.drift_baseline))
        self.summary = LiveSummary()
        self.latest: list[dict[str, Any]] = []
        self.heartbeat = Heartbeat(self.out, "orthanc", self.snapshot)
        self.outputs = live_steps(self.out, options, classifier, trail=self.trail, heartbeat=self.heartbeat,
                                  watchers=[DriftStep(self.drift, self.out, trail=self.trail),
                                            StoreInOrthanc(api, self.out)],
                                  record_path=lambda outcome: self.results / f"{outcome.name}.json")
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cxr-orthanc", daemon=True)

    def start(self) -> None:
        self.trail.record("start", mode="orthanc", model=self.classifier.path.name, sr=self.options.sr,
                          sc=self.options.sc)
        self.heartbeat.start()
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout=30)
        self.heartbeat.stop()
        self.trail.record("stop", mode="orthanc", counts=self.summary.as_dict())

    def snapshot(self) -> dict[str, Any]:
        return {"model": self.classifier.path.name, "queue": len(list(self.queue.glob("*.json"))),
                "counts": self.summary.as_dict(), "drift": self.drift.status()}

    def status(self) -> dict[str, Any]:
        """What ``/cxr-edge/status`` answers: the heartbeat's figures and the latest results."""
        return {"mode": "orthanc", "updated": utc_now(), **self.snapshot(), "latest": list(self.latest)}

    # --- the worker ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._take_changes()
                for marker in sorted(self.queue.glob("*.json"), key=lambda p: p.stat().st_mtime):
                    if self.stopping.is_set():
                        return
                    self._handle(marker)
            except Exception as exc:  # Orthanc busy or the disk full: try again, never die
                log.error("cxr-edge worker: %s (%s); retrying", type(exc).__name__, getattr(exc, "strerror", ""))
                time.sleep(1.0)
            self.wake.wait(POLL_S)
            self.wake.clear()

    def _take_changes(self) -> None:
        """New CR/DX instances from Orthanc's change log into the queue, then the sequence number on."""
        seen = self.out / "changes.json"
        since = json.loads(seen.read_text())["last"] if seen.is_file() else 0
        while True:
            answer = json.loads(self.api.RestApiGet(f"/changes?since={since}&limit=100"))
            for change in answer["Changes"]:
                if change["ChangeType"] == "NewInstance":
                    self._enqueue(change["ID"])
            since = answer["Last"]
            replace_json(seen, {"last": since})
            if answer["Done"]:
                return

    def _enqueue(self, instance: str) -> None:
        sop_class = self.api.RestApiGet(f"/instances/{instance}/metadata/SopClassUid").decode().strip()
        if sop_class not in RADIOGRAPH_CLASSES:
            return
        uid = json.loads(self.api.RestApiGet(f"/instances/{instance}"))["MainDicomTags"]["SOPInstanceUID"]
        marker = self.queue / f"{instance}.json"
        if not marker.exists():
            write_atomic(marker, json.dumps({"instance": instance, "sop_instance_uid": uid}).encode())

    def _handle(self, marker: Path) -> None:
        """Classify one queued instance (or finish an earlier run's outputs) and drop it from the queue."""
        item = json.loads(marker.read_text())
        name = f"{item['sop_instance_uid'][:64]}.{self.model_key}"
        path = self.incoming / f"{name}.dcm"
        path.unlink(missing_ok=True)
        write_atomic(path, self.api.RestApiGet(f"/instances/{item['instance']}/file"))
        header = study_header_of(path)
        stored = self.results / f"{name}.json"
        if stored.exists():  # classified before a restart: only what was cut short is written
            record = json.loads(stored.read_text())
            self.outputs.deliver(Outcome(None, record, name, path, self.classifier.contract, header), recorded=True)
        else:
            started = time.monotonic()
            prepared = self.classifier.prepare(path, keep_display=self.options.sc or self.options.cam)
            prediction = self.classifier.infer([prepared], cam=self.options.sc or self.options.cam)[0]
            record = live_record(prediction, path=f"orthanc/{item['instance']}", sha256=file_sha256(path),
                                 arrived=utc_now(), finished=utc_now(), model=self.classifier.path.name,
                                 sop_instance_uid=item["sop_instance_uid"], orthanc_instance=item["instance"],
                                 arrival_to_result_ms=round((time.monotonic() - started) * 1000, 3))
            self.summary.add(record)
            self.outputs.deliver(Outcome(prediction, record, name, path, self.classifier.contract, header))
            self.latest = ([_latest(record)] + self.latest)[:LATEST]
        path.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        log.info("cxr-edge: instance %s classified: %s", item["instance"], record.get("finding") or record["status"])


def _latest(record: dict[str, Any]) -> dict[str, Any]:
    """A result as the status route lists it: no patient identifier, no path."""
    return {key: record.get(key) for key in ("orthanc_instance", "sop_instance_uid", "finding", "label", "status",
                                             "finished", "error", "sr", "sc")}


def register(api: Any, section: dict[str, Any]) -> OrthancMode:
    """Start the mode inside Orthanc from the configuration's ``CxrEdge`` section (`cxr-edge orthanc-config`)."""
    classifier = Classifier.open(section.get("Model"), backend=section.get("Backend", "auto"),
                                 threads=section.get("Threads"))
    options = OutputOptions(sr=section.get("Sr", "tid1500"), sc=bool(section.get("Sc", False)),
                            drift_baseline=int(section.get("DriftBaseline", 200)))
    mode = OrthancMode(api, Path(section["Out"]), classifier, options)

    def status(output: Any, uri: str, **request: Any) -> None:
        output.AnswerBuffer(json.dumps(mode.status()), "application/json")

    api.RegisterRestCallback("/cxr-edge/status", status)

    def changed(change: Any, level: Any, resource: str) -> None:
        if change == api.ChangeType.NEW_INSTANCE:
            mode.wake.set()
        elif change == api.ChangeType.ORTHANC_STARTED:  # Orthanc's database opens only once started
            mode.start()
        elif change == api.ChangeType.ORTHANC_STOPPED:
            mode.stop()

    api.RegisterOnChangeCallback(changed)
    api.LogWarning(f"cxr-edge: classifying CR and DX instances with {classifier.path.name} "
                   f"on {classifier.backend.name}; results in {mode.out}")
    return mode


PLUGINS = Path("/usr/share/orthanc/plugins")
"""Where Debian's orthanc-python and orthanc-dicomweb put their plugins."""
LOADER = '''# Written by `cxr-edge orthanc-config`: loads cxr-edge into Orthanc's Python plugin.
import json
import site

site.addsitedir({site!r})  # the environment cxr-edge is installed in (its path files included)

import orthanc  # noqa: E402

from cxr_edge.runtime.live.orthanc import register  # noqa: E402

MODE = register(orthanc, json.loads(orthanc.GetConfiguration()).get("CxrEdge", {{}}))
'''


def write_config(folder: Path, *, http_port: int = 8042, dicom_port: int = 4242, aet: str = "ORTHANC",
                 storage: Path | None = None, model: str | None = None, backend: str = "auto", sr: str = "tid1500",
                 sc: bool = False, drift_baseline: int = 200, plugins: Path = PLUGINS) -> Path:
    """Write ``orthanc.json`` and the plugin loader into `folder`; returns the configuration's path.

    Orthanc then serves on 127.0.0.1 only (``RemoteAccessAllowed`` false, no HTTP login needed there), stores into
    `storage` (default ``folder/storage``), loads the Python and DICOMweb plugins, and the plugin classifies every
    CR and DX instance into ``folder/cxr-edge``.
    """
    import sysconfig

    from ..errors import CxrEdgeError

    missing = [name for name in ("libOrthancPython.so", "libOrthancDicomWeb.so") if not (plugins / name).is_file()]
    if missing:
        raise CxrEdgeError(f"Orthanc's plugins are not installed ({', '.join(missing)} missing in {plugins}); "
                           "Debian: apt install orthanc orthanc-python orthanc-dicomweb")
    folder = private_dir(Path(folder).absolute())
    storage = Path(storage).absolute() if storage else folder / "storage"
    loader = folder / "cxr_edge_plugin.py"
    loader.write_text(LOADER.format(site=sysconfig.get_paths()["purelib"]))
    config = {"Name": f"cxr-edge {aet}", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
              "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": aet, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [str(plugins / "libOrthancPython.so"),
                                                          str(plugins / "libOrthancDicomWeb.so")],
              "PythonScript": str(loader), "PythonVerbose": False, "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
              "CxrEdge": {"Out": str(folder / "cxr-edge"), "Model": model, "Backend": backend, "Sr": sr, "Sc": sc,
                          "DriftBaseline": drift_baseline}}
    path = folder / "orthanc.json"
    replace_json(path, config)
    return path

