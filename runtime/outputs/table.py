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

from ..errors import printable
from ..model.classifier import Prediction
from ..model.gate import STATUSES

__all__ = ["FORMATS", "BUDGET_S", "Summary", "make_writer", "budget_verdict", "shorten_left", "json_line"]

FORMATS = ("table", "jsonl", "csv")
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
        return f"{self.images} images, {self.failures} failed" + (f" ({', '.join(counts)})" if counts else "")


def budget_verdict(latency_ms: float) -> str:
    """``"6.2 ms, 9,700x under the 60 s budget"`` (or over it)."""
    ratio = BUDGET_S * 1000 / latency_ms if latency_ms > 0 else float("inf")
    if ratio >= 1:
        return f"{latency_ms:,.1f} ms, {ratio:,.0f}x under the {BUDGET_S:.0f} s budget"
    return f"{latency_ms:,.1f} ms, {1 / ratio:,.1f}x OVER the {BUDGET_S:.0f} s budget"


class Writer(Protocol):
    def write(self, prediction: Prediction) -> None: ...

    def close(self, summary: Summary) -> None: ...


class JsonlWriter:
    """One JSON object per input, in input order; with ``show_phi`` a ``patient`` key is added for DICOM inputs."""

    def __init__(self, stream: IO[str], show_phi: bool) -> None:
        self.stream = stream
        self.show_phi = show_phi

    def write(self, prediction: Prediction) -> None:
        record = prediction.to_record()
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
    """One row per input: path, label, confidence, a probability column per class, latencies, error, status, the
    gate's score and threshold, and the warnings (joined by '; ')."""

    def __init__(self, stream: IO[str], class_names: Sequence[str], show_phi: bool) -> None:
        self.class_names = list(class_names)
        self.show_phi = show_phi
        self.writer = csv.writer(stream)
        self.stream = stream
        header = ["path", "label", "confidence", *(f"p_{c}" for c in self.class_names), "decode_ms",
                  "preprocess_ms", "inference_ms", "total_ms", "error", "status", "gate_score", "gate_threshold",
                  "warnings"]
        self.writer.writerow(header + (["patient_name", "patient_id"] if show_phi else []))

    def write(self, prediction: Prediction) -> None:
        probabilities = prediction.probabilities or {}
        latency = prediction.latency_ms
        row = [prediction.path, prediction.label or "", _fmt(prediction.confidence),
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

    On a wide terminal every class probability has a column; on a narrow one (80 columns) the table keeps only
    file, label, confidence and latency (the probabilities are in ``--format jsonl`` and ``csv``), and a path too
    long for its column is shortened from the left, so that every row still names its file.
    """

    MIN_FILE_WIDTH = 28
    """Narrower than this, the file column could no longer show a typical file name: switch to the compact layout."""

    def __init__(self, console: Any, class_names: Sequence[str], show_phi: bool, title: str) -> None:
        self.console = console
        self.class_names = list(class_names)
        self.show_phi = show_phi
        self.title = title
        self.rows: list[Prediction] = []

    def write(self, prediction: Prediction) -> None:
        self.rows.append(prediction)

    def _columns(self, compact: bool) -> list[tuple[str, int]]:
        """(header, width) of every column but the file's."""
        label = max([9, *(len(n) + 1 for n in self.class_names)])  # "rejected", or a label and "?"
        columns = [("patient", 24)] if self.show_phi else []
        columns += [("label", label), ("conf.", 5)]
        if not compact:
            columns += [(n.replace("_", "\n"), max(5, *(len(part) for part in n.split("_")))) for n in self.class_names]
        return columns + [("ms", 6)]

    def _file_width(self, columns: list[tuple[str, int]]) -> int:
        borders = 3 * (len(columns) + 1) + 1  # a separator and a space either side of every cell
        return self.console.width - borders - sum(width for _, width in columns)

    def close(self, summary: Summary) -> None:
        from rich.markup import escape
        from rich.table import Table

        compact = self._file_width(self._columns(False)) < self.MIN_FILE_WIDTH
        columns = self._columns(compact)
        file_width = max(12, self._file_width(columns))
        title = escape(self.title) + (" [dim](probabilities: --format jsonl or csv)[/]" if compact else "")
        table = Table(title=title, title_justify="left")
        table.add_column("file", overflow="fold", min_width=min(file_width, 12), max_width=file_width)
        for header, width in columns:
            left = header in ("patient", "label")
            table.add_column(header, justify="left" if left else "right", no_wrap=not left or header == "label",
                             min_width=width if header != "patient" else None)
        for p in self.rows:
            cells = [escape(shorten_left(printable(p.path), file_width))]
            if self.show_phi:
                patient = p.patient or {}
                cells.append(escape(printable(f"{patient.get('name', '')} {patient.get('id', '')}".strip())))
            if p.error is not None:  # the reason is listed under the table, where it has room
                table.add_row(*cells, "[red]failed[/]", *([""] * (len(columns) - len(cells))))
                continue
            probabilities = p.probabilities or {}
            shown = {"classified": f"[bold]{p.label}[/]", "uncertain": f"[yellow]{p.label}?[/]",
                     "rejected": "[red]rejected[/]"}[p.status]
            cells += [shown, f"{p.confidence:.3f}"]
            if not compact:
                cells += [f"{probabilities[c]:.3f}" for c in self.class_names]
            table.add_row(*cells, f"{p.latency_ms['total']:.1f}")
        self.console.print(table)
        for p in self.rows:  # what the table has no room for: reasons and warnings, one line each
            if p.error is not None:
                self.console.print(f"[red]failed[/] {escape(printable(p.path))}: {escape(printable(p.error))}")
            for warning in p.warnings:
                colour = "red" if warning.startswith("rejected") else "yellow"
                self.console.print(f"[{colour}]{p.status}[/] {escape(printable(p.path))}: {escape(printable(warning))}")
        info = summary.as_dict()
        median = f"median {info['median_ms']:.1f} ms per image; slowest {info['verdict']}" \
            if info["median_ms"] is not None else info["verdict"]
        line = escape(summary.line()).replace(f", {summary.failures} failed", f", [red]{summary.failures} failed[/]") \
            if summary.failures else escape(summary.line())
        self.console.print(f"{line}; {median}")


def shorten_left(path: str, width: int) -> str:
    """`path` cut from the left to `width` characters, keeping its end (the file name) whole: ``…/b/c.png``."""
    if len(path) <= width:
        return path
    name = path.rsplit("/", 1)[-1]
    if len(name) + 2 > width:
        return name  # the name alone is too long: the column folds it, but nothing of it is lost
    tail = path[-(width - 1):]
    cut = tail.find("/")
    return "…" + (tail[cut:] if 0 <= cut < len(tail) - len(name) else "/" + name)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def make_writer(fmt: str, stream: IO[str], console: Any, class_names: Sequence[str], *, show_phi: bool,
                title: str = "") -> Writer:
    """The writer for ``table``, ``jsonl`` or ``csv``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "jsonl":
        return JsonlWriter(stream, show_phi)
    if fmt == "csv":
        return CsvWriter(stream, class_names, show_phi)
    return TableWriter(console, class_names, show_phi, title)
