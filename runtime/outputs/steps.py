"""One ordered list of output steps for every result, whichever way its image arrived.

A mode (``predict``, the watched folder, the DICOM node, an archive job) turns each prediction into an `Outcome`
and hands it to its `OutputSteps`: the heatmap picture, the Secondary Capture, the JSON record, the coded or
basic SR, the FHIR bundle, forwarding to a PACS, the Parquet row and the status heartbeat are steps, chosen by
options that mean the same in every mode. Each step works in two phases:

1. `Step.plan`, before the record is written: a step whose file the record must never name in vain (a heatmap,
   a Secondary Capture) writes it here; a step that is rebuilt from the record (a report, a FHIR bundle) only
   names its file in the record. The record step writes the record last in this phase.
2. `Step.finish`, after the record exists: what the record names and is missing is written, reports are sent.
   After a crash the mode runs only this phase on the stored record, which repairs whatever was cut short.

Every file is written whole or not at all (`cxr_edge.runtime.files`); a name already taken by another file is
never replaced.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import printable
from ..files import fit_name, json_bytes, private_dir, utc_now, write_atomic, write_json_atomic
from ..model.classifier import Prediction
from ..model.contract import Contract
from ..model.model_file import file_sha256

__all__ = ["Outcome", "study_header_of", "Step", "OutputSteps", "HeatmapStep", "SecondaryCaptureStep", "RecordStep",
           "ReportStep", "FhirStep", "ForwardStep", "RowStep", "TrailStep", "HeartbeatStep", "Naming", "caption",
           "OutputOptions", "live_steps", "file_steps"]

log = logging.getLogger(__name__)

_NO_HEADER = object()


@dataclass
class Outcome:
    """One input's result on its way through the output steps.

    Attributes:
        prediction: the classifier's result (with its heatmap and display image when they were asked for); None
            when an earlier run's stored record is finished (`OutputSteps.deliver` with ``recorded``).
        record: the record the steps complete; each step adds the path of what it writes under its own key.
        name: what every output of this input is named after (a file name, ``name.hash`` or a SOP Instance UID).
        source: the stored input, read again only for its DICOM header; None for arrays.
        contract: the model's contract: class and finding names, their display names and codes.
    """

    prediction: Prediction | None
    record: dict[str, Any]
    name: str
    source: Path | None
    contract: Contract
    _header: Any = field(default=_NO_HEADER, repr=False)

    @property
    def failed(self) -> bool:
        return self.record.get("error") is not None

    @property
    def rejected(self) -> bool:
        return self.record.get("status") == "rejected"

    def header(self) -> Any:
        """The DICOM header of a DICOM input that can name its study (its UIDs), else None; read once, and not at
        all for an input the loader did not read as DICOM."""
        if self._header is _NO_HEADER:
            dicom = self.prediction is None or self.prediction.patient is not None
            self._header = study_header_of(self.source) if self.source is not None and dicom else None
        return self._header


def study_header_of(source: Path | Any) -> Any:
    """A DICOM file's header (or a header already read) if it names its study (SOP, study and series UIDs), else
    None: the outputs that join a study need them."""
    header = source
    if isinstance(source, Path):
        import pydicom

        try:
            header = pydicom.dcmread(source, stop_before_pixels=True)
        except Exception:  # not DICOM, or unreadable: no DICOM outputs
            return None
    keywords = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
    if not all(str(header.get(keyword, "") or "") for keyword in keywords):
        name = source.name if isinstance(source, Path) else str(header.get("SOPInstanceUID", "") or "an instance")
        log.warning("%s: no DICOM report or capture: the header cannot name its study", printable(name))
        return None
    return header


def caption(record: dict[str, Any], contract: Contract) -> str:
    """What a heatmap shows, in words: the finding and its probability, and the class where it says more."""
    finding, label = record.get("finding"), record.get("label")
    if finding is None or label is None:
        return "no finding"
    text = f"{contract.display(finding)} {record['finding_probability']:.2f}"
    if record.get("positive") is not None:  # multi-label: the map is of the most probable finding
        positive = record["positive"]
        text += "; positive: " + (", ".join(contract.display(n) for n in positive) if positive else "none")
    elif finding != label:
        text += f" ({contract.display(label)} {record['probabilities'][label]:.2f})"
    return text + ("" if record.get("status") == "classified" else f" [{record['status']}]")


class Naming:
    """Where a step puts the file of one input: `folder`/<name><suffix>, named in the record relative to `root`.

    Args:
        folder: the step's folder (created on first use).
        suffix: ``.cam.png``, ``.sr.dcm``...
        root: record paths are relative to it (a live mode's output folder); None records the path as written.
        unique: never write over a taken name: the first free one of ``name<suffix>``, ``name-1<suffix>``,
            ``name-2<suffix>``... is taken (user folders of `predict`); otherwise a taken name means the file was
            written before, by an earlier run (the live modes name each input's outputs uniquely themselves).
    """

    def __init__(self, folder: Path, suffix: str, *, root: Path | None = None, unique: bool = False) -> None:
        self.folder, self.suffix, self.root, self.unique = Path(folder), suffix, root, unique

    def path(self, name: str) -> Path:
        """The file of `name` (with `unique`, the first name that is free now)."""
        private_dir(self.folder)
        for attempt in range(10_000 if self.unique else 1):
            candidate = self.folder / fit_name(f"{name}{'-' + str(attempt) if attempt else ''}{self.suffix}")
            if not self.unique or not candidate.exists():
                return candidate
        raise OSError(f"no free name for {name}{self.suffix} in {self.folder}")

    def write(self, name: str, data: bytes) -> Path:
        """Write `data` as the file of `name`; with `unique`, under the next free name should another writer take
        the first one meanwhile (the link that completes a write never replaces a file)."""
        while True:
            path = self.path(name)
            if write_atomic(path, data) or not self.unique:
                return path

    def recorded(self, path: Path) -> str:
        """How the record names `path`: relative to the root where it lies under it, else as written."""
        if self.root is not None and path.is_relative_to(self.root):
            return path.relative_to(self.root).as_posix()
        return str(path)

    def resolve(self, recorded: str) -> Path:
        return self.root / recorded if self.root is not None else Path(recorded)


class Step:
    """An output of every result: `plan` before the record is written, `finish` after (see the module)."""

    key: str | None = None

    def plan(self, outcome: Outcome) -> None:
        """Write what the record must not name in vain, and name what `finish` will write."""

    def finish(self, outcome: Outcome) -> None:
        """Write what the record names and is missing; send what must be sent."""


class OutputSteps:
    """The ordered steps of a mode; `deliver` runs one outcome through them."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)

    def deliver(self, outcome: Outcome, *, recorded: bool = False) -> dict[str, Any]:
        """Run both phases (only `finish` for an outcome whose record was stored by an earlier run)."""
        if not recorded:
            for step in self.steps:
                step.plan(outcome)
        for step in self.steps:
            step.finish(outcome)
        return outcome.record

    def __bool__(self) -> bool:
        return bool(self.steps)


class HeatmapStep(Step):
    """The heatmap as a picture a person opens: the film with the activation map, the finding, the class and a
    colour scale. None for a failed or rejected input."""

    key = "cam"

    def __init__(self, naming: Naming) -> None:
        self.naming = naming

    def plan(self, outcome: Outcome) -> None:
        import cv2

        from .heatmaps import heatmap_picture

        p = outcome.prediction
        if outcome.failed or outcome.rejected or p is None or p.cam is None or p.display is None:
            return
        picture = heatmap_picture(p.display, p.cam, caption(outcome.record, outcome.contract))
        ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        if ok:
            outcome.record[self.key] = self.naming.recorded(self.naming.write(outcome.name, png.tobytes()))


class SecondaryCaptureStep(Step):
    """The heatmap as a DICOM Secondary Capture in the image's study (DICOM inputs that were classified)."""

    key = "sc"

    def __init__(self, naming: Naming, model_sha256: str) -> None:
        self.naming, self.model_sha256 = naming, model_sha256

    def plan(self, outcome: Outcome) -> None:
        import pydicom

        from .heatmaps import heatmap_picture
        from .secondary_capture import build_heatmap_sc

        p = outcome.prediction
        if outcome.failed or outcome.rejected or p is None or p.cam is None or p.display is None:
            return
        header = outcome.header()
        if header is None:
            return
        text = caption(outcome.record, outcome.contract)
        capture = build_heatmap_sc(header, heatmap_picture(p.display, p.cam, text), model_sha256=self.model_sha256,
                                   caption=text)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, capture, enforce_file_format=True)
        outcome.record[self.key] = self.naming.recorded(self.naming.write(outcome.name, buffer.getvalue()))


class RecordStep(Step):
    """The JSON record, written whole and once; the last step of the first phase."""

    key = "record"

    def __init__(self, path_of: Callable[[Outcome], Path]) -> None:
        self.path_of = path_of

    def plan(self, outcome: Outcome) -> None:
        write_json_atomic(self.path_of(outcome), outcome.record)


class _RebuiltStep(Step):
    """A step whose file is rebuilt from the record: named in `plan` and written in `finish` (or at once, in `plan`,
    where names must be free ones: a user's folder)."""

    def __init__(self, naming: Naming) -> None:
        self.naming = naming

    def wanted(self, outcome: Outcome) -> bool:
        return not outcome.failed

    def render(self, outcome: Outcome) -> bytes | None:
        raise NotImplementedError

    def plan(self, outcome: Outcome) -> None:
        if not self.wanted(outcome):
            outcome.record[self.key] = None  # asked for, but there is nothing to report on
            return
        if self.naming.unique:
            data = self.render(outcome)
            if data is not None:
                outcome.record[self.key] = self.naming.recorded(self.naming.write(outcome.name, data))
        else:
            outcome.record[self.key] = self.naming.recorded(self.naming.path(outcome.name))

    def finish(self, outcome: Outcome) -> None:
        recorded = outcome.record.get(self.key)
        if self.naming.unique or not recorded or self.naming.resolve(recorded).exists():
            return
        data = self.render(outcome)
        if data is not None:
            write_atomic(self.naming.resolve(recorded), data)


class ReportStep(_RebuiltStep):
    """The DICOM SR of a DICOM input in its study: coded TID 1500 or Basic Text (`reports.SR_KINDS`)."""

    key = "sr"

    def __init__(self, naming: Naming, kind: str, model_name: str, model_sha256: str, software_version: str) -> None:
        super().__init__(naming)
        self.kind = kind
        self.identity = {"model_name": model_name, "model_sha256": model_sha256, "software_version": software_version}

    def wanted(self, outcome: Outcome) -> bool:
        return not outcome.failed and outcome.header() is not None

    def render(self, outcome: Outcome) -> bytes | None:
        from .reports import render_report

        header = outcome.header()
        return None if header is None else render_report(header, outcome.record, outcome.contract, kind=self.kind,
                                                         **self.identity)


class FhirStep(_RebuiltStep):
    """A FHIR R5 Bundle (DiagnosticReport and Observation) per classified or rejected input."""

    key = "fhir"

    def __init__(self, naming: Naming, model_name: str, model_sha256: str, software_version: str,
                 keep_phi: bool = False) -> None:
        super().__init__(naming)
        self.model_name, self.model_sha256, self.software_version = model_name, model_sha256, software_version
        self.keep_phi = keep_phi

    def render(self, outcome: Outcome) -> bytes:
        from .fhir import build_fhir_bundle

        known = outcome.record.get("patient") or (outcome.prediction.patient if outcome.prediction else None)
        patient = {k: str(known.get(k, "")) for k in ("id", "name")} if self.keep_phi and known else None
        record = self._identified(outcome) | {"model": self.model_name}
        bundle = build_fhir_bundle(record, outcome.contract, model_sha256=self.model_sha256,
                                   software_version=self.software_version, patient=patient)
        return json_bytes(bundle)

    @staticmethod
    def _identified(outcome: Outcome) -> dict[str, Any]:
        """The record with what names the image and the time (a `predict` record has neither of its own): the
        SOP Instance UID of a DICOM input, else the file's SHA-256."""
        record = dict(outcome.record)
        record.setdefault("finished", utc_now())
        header = outcome.header()
        if not record.get("sop_instance_uid") and header is not None:
            record["sop_instance_uid"] = str(header.SOPInstanceUID)
        if not record.get("sop_instance_uid") and not record.get("sha256") and outcome.source is not None:
            record["sha256"] = file_sha256(outcome.source)
        return record


class ForwardStep(Step):
    """Queue the DICOM objects a result produced (its SR and Secondary Capture) in the durable outbox."""

    def __init__(self, outbox: Any, root: Path, keys: Sequence[str] = ("sr", "sc")) -> None:
        self.outbox, self.root, self.keys = outbox, root, tuple(keys)

    def finish(self, outcome: Outcome) -> None:
        for key in self.keys:
            if outcome.record.get(key):
                self.outbox.put(self.root / outcome.record[key])


class RowStep(Step):
    """The record as a flat row (a Parquet table's): each probability a column, the gate's score a column."""

    def __init__(self, rows: list[dict[str, Any]], class_names: Sequence[str]) -> None:
        self.rows, self.class_names = rows, tuple(class_names)

    def finish(self, outcome: Outcome) -> None:
        record = outcome.record
        row = {k: v for k, v in record.items() if k not in ("probabilities", "gate", "latency_ms")}
        probabilities = record.get("probabilities") or {}
        row |= {f"p_{name}": probabilities.get(name) for name in self.class_names}
        row["confidence"] = probabilities[max(probabilities, key=probabilities.get)] if probabilities else None
        row["gate_score"] = (record.get("gate") or {}).get("score")
        row |= {f"{k}_ms": (record.get("latency_ms") or {}).get(k) for k in ("decode", "inference", "total")}
        self.rows.append(row)


class TrailStep(Step):
    """Write the result into the audit trail: which image (SOP Instance UID, else SHA-256), what came of it, and
    which files it produced; never who the patient is."""

    def __init__(self, trail: Any) -> None:
        self.trail = trail

    def finish(self, outcome: Outcome) -> None:
        record = outcome.record
        written = {key: record[key] for key in ("sr", "sc", "fhir", "cam") if record.get(key)}
        self.trail.record("result-written", sop_instance_uid=record.get("sop_instance_uid"),
                          sha256=record.get("sha256"), status=record.get("status"), finding=record.get("finding"),
                          error=record.get("error"), outputs=written)


class HeartbeatStep(Step):
    """Tell ``status.json`` at once that a result was written."""

    def __init__(self, heartbeat: Any) -> None:
        self.heartbeat = heartbeat

    def finish(self, outcome: Outcome) -> None:
        self.heartbeat.beat()


@dataclass(frozen=True)
class OutputOptions:
    """What a user asked for, meaning the same in every mode.

    Args:
        cam: the heatmap picture (a PNG: the status page shows it).
        sc: the heatmap as a DICOM Secondary Capture in the study (DICOM inputs; implies the PNG in live modes).
        sr: a report in the study (DICOM inputs): one of `reports.SR_KINDS`, or None.
        fhir: a FHIR bundle per input, into this folder.
        keep_phi: patient name and ID in the records and the FHIR subject.
        drift_baseline: results forming the drift baseline (`cxr_edge.runtime.monitoring`).
    """

    cam: bool = False
    sc: bool = False
    sr: str | None = None
    fhir: Path | None = None
    keep_phi: bool = False
    drift_baseline: int = 200


def _identity(classifier: Any) -> dict[str, str]:
    import cxr_edge

    return {"model_name": classifier.path.name, "model_sha256": file_sha256(classifier.path),
            "software_version": cxr_edge.__version__}


def live_steps(out: Path, options: OutputOptions, classifier: Any, *, record_path: Callable[[Outcome], Path],
               outbox: Any = None, heartbeat: Any = None, trail: Any = None,
               watchers: Sequence[Step] = ()) -> OutputSteps:
    """The steps of a live mode writing under `out`: cam/, sc/, sr/, the FHIR folder, the record, the outbox,
    the `watchers` of the stream (drift monitoring) and the heartbeat, each where asked for; files are named by the
    mode's own unique name of the input."""
    identity = _identity(classifier)
    steps: list[Step] = []
    if options.cam or options.sc:
        steps.append(HeatmapStep(Naming(out / "cam", ".cam.png", root=out)))
    if options.sc:
        steps.append(SecondaryCaptureStep(Naming(out / "sc", ".sc.dcm", root=out), identity["model_sha256"]))
    if options.sr:
        steps.append(ReportStep(Naming(out / "sr", ".sr.dcm", root=out), options.sr, **identity))
    if options.fhir is not None:
        steps.append(FhirStep(Naming(options.fhir, ".json", root=out), **identity, keep_phi=options.keep_phi))
    steps.append(RecordStep(record_path))
    if trail is not None:
        steps.append(TrailStep(trail))
    if outbox is not None:
        steps.append(ForwardStep(outbox, out))
    steps.extend(watchers)
    if heartbeat is not None:
        steps.append(HeartbeatStep(heartbeat))
    return OutputSteps(steps)


def file_steps(classifier: Any, *, cam_dir: Path | None = None, sr_dir: Path | None = None, sr_kind: str = "tid1500",
               fhir_dir: Path | None = None, keep_phi: bool = False) -> OutputSteps:
    """The steps of `predict`: heatmaps, reports and FHIR bundles into the user's folders, named after each input,
    never replacing a file (a taken name gets ``-1``, ``-2``...)."""
    identity = _identity(classifier) if sr_dir is not None or fhir_dir is not None else {}
    steps: list[Step] = []
    if cam_dir is not None:
        steps.append(HeatmapStep(Naming(cam_dir, ".cam.png", unique=True)))
    if sr_dir is not None:
        steps.append(ReportStep(Naming(sr_dir, ".sr.dcm", unique=True), sr_kind, **identity))
    if fhir_dir is not None:
        steps.append(FhirStep(Naming(fhir_dir, ".fhir.json", unique=True), **identity, keep_phi=keep_phi))
    return OutputSteps(steps)
