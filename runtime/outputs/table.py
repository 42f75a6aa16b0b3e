"""How predictions reach a person or a program: a rich table, JSON lines, or CSV.

JSON lines and CSV stream one record per input as soon as it is done; the table is printed once, with a summary
that judges the slowest image against the one-minute budget per image.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any, Protocol

from ..choices import OUTPUT_FORMATS, STATUSES
from ..errors import printable
from ..model.classifier import Prediction

__all__ = ["FORMATS", "BUDGET_S", "Summary", "make_writer", "budget_verdict", "shorten_left", "json_line"]

FORMATS = OUTPUT_FORMATS
BUDGET_S = 60.0
"""The hospital's budget: one minute per image."""


class Summary:
    """Counts per status and latencies of a run, updated per prediction."""

    def __init__(self) -> None:
        self.images = 0
        self.statuses: Counter[str] = Counter()
        self.totals_ms: list[float] = []
        self.flagged = 0

    @property
    def failures(self) -> int:
        return self.statuses["failed"]

    @property
    def doubtful(self) -> int:
        """Inputs that were read but not plainly classified: rejected or uncertain, or (with ``--gate warn``) kept
        although the gate objected."""
        return self.statuses["rejected"] + self.statuses["uncertain"] + self.flagged

    def add(self, prediction: Prediction) -> None:
        self.images += 1
        self.statuses[prediction.status] += 1
        self.flagged += prediction.flagged and prediction.status == "classified"
        if prediction.error is None:
            self.totals_ms.append(prediction.latency_ms["total"])

    def as_dict(self) -> dict[str, Any]:
        median = statistics.median(self.totals_ms) if self.totals_ms else None
        return {"images": self.images, "failures": self.failures,
                "statuses": {status: self.statuses[status] for status in STATUSES}, "median_ms": median,
                "max_ms": max(self.totals_ms) if self.totals_ms else None,
                "verdict": budget_verdict(max(self.totals_ms)) if self.totals_ms else "no image classified"}

    def line(self) -> str:
        """``3 images, 0 failed (2 classified, 1 rejected)``: failures always, then every status that occurred."""
        counts = [f"{self.statuses[s]} {s}" for s in STATUSES if self.statuses[s] and s != "failed"]
        noun = "image" if self.images == 1 else "images"
        return f"{self.images} {noun}, {self.failures} failed" + (f" ({', '.join(counts)})" if counts else "")


def budget_verdict(latency_ms: float) -> str:
    """``"6.2 ms, 9,700x under the 60 s budget"`` (or over it)."""
    ratio = BUDGET_S * 1000 / latency_ms if latency_ms > 0 else float("inf")
    if ratio >= 1:
        return f"{latency_ms:,.1f} ms, {ratio:,.0f}x under the {BUDGET_S:.0f} s budget"
    return f"{latency_ms:,.1f} ms, {1 / ratio:,.1f}x OVER the {BUDGET_S:.0f} s budget"


class Writer(Protocol):
    def write(self, prediction: Prediction, record: dict[str, Any] | None = None) -> None: ...

    def close(self, summary: Summary) -> None: ...


class JsonlWriter:
    """One JSON object per input, in input order: the record (with the paths of what the output steps wrote); with
    ``show_phi`` a ``patient`` key is added for DICOM inputs."""

    def __init__(self, stream: IO[str], show_phi: bool) -> None:
        self.stream = stream
        self.show_phi = show_phi

    def write(self, prediction: Prediction, record: dict[str, Any] | None = None) -> None:
        record = dict(record if record is not None else prediction.to_record())
        if self.show_phi and prediction.patient:
            record["patient"] = prediction.patient
        self.stream.write(json_line(record) + "\n")
        self.stream.flush()

    def close(self, summary: Summary) -> None:
        pass


def json_line(record: Any) -> str:
    """One record as strict JSON: a value that is not a finite number becomes null (``NaN`` is not JSON), and
    every non-ASCII or control character of a file name is escaped, so the line is safe on a terminal too."""
    return json.dumps(_finite(record), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class CsvWriter:
    """One row per input: path, label, finding and its probability, (for a multi-label model) the positive findings
    joined by ';', confidence, a probability column per class, latencies, error, status, the gate's score and
    threshold, and the warnings (joined by '; ')."""

    def __init__(self, stream: IO[str], class_names: Sequence[str], show_phi: bool, multi_label: bool = False) -> None:
        self.class_names = list(class_names)
        self.show_phi = show_phi
        self.multi_label = multi_label
        self.writer = csv.writer(stream)
        self.stream = stream
        header = ["path", "label", "finding", "finding_probability", *(["positive"] if multi_label else []),
                  "confidence",
                  *(f"p_{c}" for c in self.class_names), "decode_ms", "preprocess_ms", "inference_ms", "total_ms",
                  "error", "status", "gate_score", "gate_threshold", "warnings"]
        self.writer.writerow(header + (["patient_name", "patient_id"] if show_phi else []))

    def write(self, prediction: Prediction, record: dict[str, Any] | None = None) -> None:
        probabilities = prediction.probabilities or {}
        latency = prediction.latency_ms
        shown = prediction.status != "rejected"  # a rejected input has no result to be confident of
        positive = [";".join(prediction.positive or ())] if self.multi_label else []
        row = [prediction.path, prediction.label or "", prediction.finding or "",
               _fmt(prediction.finding_probability), *positive, _fmt(prediction.confidence if shown else None),
               *(_fmt(probabilities.get(c)) for c in self.class_names),
               *(_fmt(latency.get(k)) for k in ("decode", "preprocess", "inference", "total")), prediction.error or "",
               prediction.status, _fmt((prediction.gate or {}).get("score")),
               _fmt((prediction.gate or {}).get("threshold")), "; ".join(prediction.warnings)]
        if self.show_phi:
            patient = prediction.patient or {}
            row += [patient.get("name", ""), patient.get("id", "")]
        self.writer.writerow(row)
        self.stream.flush()

    def close(self, summary: Summary) -> None:
        pass


class TableWriter:
    """A rich table, one row per image, then the run's summary.

    Columns: the file, the result (the finding; ``?`` when uncertain, ``rejected``, ``failed``), its probability
    (none for a rejected or failed input), the class where it says more than the finding (the subtype of a
    pneumonia), the milliseconds; on a terminal wide enough, every class probability too (otherwise they are in
    ``--format jsonl`` and ``csv``). Every row keeps to one line: a path too long for its column is shortened from
    the left, a file name too long on its own in its middle. Reasons and warnings follow the table, once each.
    """

    MIN_FILE_WIDTH = 28
    """Narrower than this, the file column could no longer show a typical file name: switch to the compact layout."""
    CLASS_WIDTH = 12

    def __init__(self, console: Any, contract: Any, show_phi: bool, title: str) -> None:
        self.console = console
        self.contract = contract
        self.class_names = list(contract.class_names)
        self.show_phi = show_phi
        self.title = title
        self.rows: list[Prediction] = []

    def write(self, prediction: Prediction, record: dict[str, Any] | None = None) -> None:
        self.rows.append(prediction)

    def _columns(self, compact: bool) -> list[tuple[str, int]]:
        """(header, width) of every column but the file's."""
        more = 3 if self.contract.multi_label else 0  # "+2": more positive findings than the first
        result = max([9, *(len(n) + 1 + more for n in self.contract.finding_names)])  # "rejected", or a finding, "?"
        columns = [("patient", 24)] if self.show_phi else []
        columns += [("result", result), ("prob.", 5)]
        if self.contract.findings:
            columns.append(("class", min(self.CLASS_WIDTH, max(len(self._short(n)) for n in self.class_names))))
        if not compact:
            columns += [(n.replace("_", "\n"), max(5, *(len(part) for part in n.split("_")))) for n in self.class_names]
        return columns + [("ms", 6)]

    def _short(self, name: str) -> str:
        """A class as the table names it: the first word of its display name (``bacterial``, ``viral``)."""
        return self.contract.display(name).split()[0].lower()[:self.CLASS_WIDTH]

    def _file_width(self, columns: list[tuple[str, int]]) -> int:
        borders = 3 * (len(columns) + 1) + 1  # a separator and a space either side of every cell
        return self.console.width - borders - sum(width for _, width in columns)

    def _cells(self, p: Prediction, columns: list[tuple[str, int]], compact: bool) -> list[str]:
        from rich.markup import escape

        cells = []
        if self.show_phi:
            patient = p.patient or {}
            cells.append(escape(printable(f"{patient.get('name', '')} {patient.get('id', '')}".strip())))
        if p.error is not None:  # the reason is listed under the table, where it has room
            return cells + ["[red]failed[/]"] + [""] * (len(columns) - len(cells) - 1)
        if p.status == "rejected":  # no result, so nothing to be sure of
            cells += ["[red]rejected[/]", "-"]
        else:
            mark = "?" if p.status == "uncertain" else ""
            colour = "yellow" if mark else "bold"
            name, probability = _headline(p)
            cells += [f"[{colour}]{name}{mark}[/]", f"{probability:.3f}"]
        if self.contract.findings:
            cells.append(self._short(p.label) if p.label is not None and p.label != p.finding else "")
        if not compact:
            cells += [f"{(p.probabilities or {})[c]:.3f}" for c in self.class_names]
        return cells + [f"{p.latency_ms['total']:.1f}"]

    def close(self, summary: Summary) -> None:
        from rich.markup import escape
        from rich.table import Table

        compact = self._file_width(self._columns(False)) < self.MIN_FILE_WIDTH
        columns = self._columns(compact)
        file_width = max(12, self._file_width(columns))
        table = Table(title=escape(self.title), title_justify="left")
        table.add_column("file", no_wrap=True, min_width=min(file_width, 12), max_width=file_width)
        for header, width in columns:
            table.add_column(header, justify="left" if header in ("patient", "result", "class") else "right",
                             no_wrap=True, min_width=width if header != "patient" else None)
        for p in self.rows:
            table.add_row(escape(shorten_left(printable(p.path), file_width)), *self._cells(p, columns, compact))
        self.console.print(table)
        if compact:
            self.console.print("[dim]class probabilities: --format jsonl or csv[/]")
        for p in self.rows:  # what the table has no room for: reasons and warnings, one line each
            if p.error is not None:
                self.console.print(f"[red]failed[/] {escape(printable(p.path))}: {escape(printable(p.error))}")
            for warning in p.warnings:
                colour = "red" if warning.startswith("rejected") else "yellow"
                said = warning.removeprefix(f"{p.status}: ")  # the line starts with the status already
                self.console.print(f"[{colour}]{p.status}[/] {escape(printable(p.path))}: {escape(printable(said))}")
        info = summary.as_dict()
        median = f"median {info['median_ms']:.1f} ms per image; slowest {info['verdict']}" \
            if info["median_ms"] is not None else info["verdict"]
        line = escape(summary.line()).replace(f", {summary.failures} failed", f", [red]{summary.failures} failed[/]") \
            if summary.failures else escape(summary.line())
        self.console.print(f"{line}; {median}")


def shorten_left(path: str, width: int) -> str:
    """`path` cut to `width` characters, keeping its end: ``…/b/c.png``; a file name longer than the width on its
    own keeps its beginning and its end (``chest-…-0042.png``), so that a row stays on one line."""
    if len(path) <= width:
        return path
    name = path.rsplit("/", 1)[-1]
    if len(name) + 2 > width:
        head = (width - 1) // 2
        return name[:head] + "…" + name[len(name) - (width - 1 - head):]
    tail = path[-(width - 1):]
    cut = tail.find("/")
    return "…" + (tail[cut:] if 0 <= cut < len(tail) - len(name) else "/" + name)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _headline(p: Prediction) -> tuple[str, float]:
    """What the result column says: the finding; for a multi-label model the most probable positive finding and
    how many more are positive (``effusion+2``), or ``none`` with the highest probability of any finding."""
    if p.positive is None:
        return str(p.finding), float(p.finding_probability or 0.0)
    probabilities = p.probabilities or {}
    if not p.positive:
        return "none", max(probabilities.values(), default=0.0)
    more = f"+{len(p.positive) - 1}" if len(p.positive) > 1 else ""
    return f"{p.positive[0]}{more}", probabilities[p.positive[0]]


def make_writer(fmt: str, stream: IO[str], console: Any, contract: Any, *, show_phi: bool,
                title: str = "") -> Writer:
    """The writer for ``table``, ``jsonl`` or ``csv``; `contract` names the classes and findings."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "jsonl":
        return JsonlWriter(stream, show_phi)
    if fmt == "csv":
        return CsvWriter(stream, contract.class_names, show_phi, contract.multi_label)
    return TableWriter(console, contract, show_phi, title)
