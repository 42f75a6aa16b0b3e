"""What both live modes report: one JSON record per input, and a running summary that does not grow."""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any

from ..errors import printable
from ..model.classifier import Prediction

__all__ = ["live_record", "live_line", "LiveSummary"]


def live_record(prediction: Prediction, *, path: str, sha256: str, arrived: str, finished: str,
                model: str, **extra: Any) -> dict[str, Any]:
    """The `predict` jsonl record of one input plus where it came from and when.

    Args:
        prediction: the classifier's result.
        path: the input as the sender knows it (its path in the watched folder, or the stored instance).
        sha256: hash of the input's bytes, so a result can always be matched to its file.
        arrived: when the input was complete (ISO 8601 UTC).
        finished: when its result was ready.
        model: the model file's name.
        extra: mode-specific keys (where the input went, DICOM UIDs, ...).
    """
    record = prediction.to_record() | {"path": path}
    return record | {"sha256": sha256, "arrived": arrived, "finished": finished, "model": model} | extra


NAME_WIDTH = 28
"""Characters the input's name is padded to in a live line, so that the columns align; a longer name is shown
whole (it names the input: a file or a SOP Instance UID), pushing its line's columns to the right."""


def live_line(record: dict[str, Any], name: str, *, note: str | None = None, latency_ms: float | None = None,
              at: str | None = None) -> str:
    """One aligned line per live result: time, input, result (the finding, ``?`` when uncertain, ``REJECTED``,
    ``FAILED``), its probability, the class where it says more, latency, then warnings or the reason.

    Args:
        record: the result record.
        name: how to call the input (a file name, or a SOP Instance UID: never a patient identifier).
        note: said instead of the result (``already classified``).
        latency_ms: the latency to show (default: the record's own total).
        at: the time to show (ISO 8601; default: when the record was finished). An input seen again is shown at
            the time it was seen again, not at its first result's.
    """
    clock = (at or record["finished"])[11:23]
    name = printable(name)
    if note:
        return f"{clock}  {name:<{NAME_WIDTH}}  {note}"
    if record["error"] is not None:
        return f"{clock}  {name:<{NAME_WIDTH}}  FAILED: {printable(record['error'])}"
    probabilities = record["probabilities"]
    top = max(probabilities, key=probabilities.get)
    finding = record.get("finding") or top
    if record.get("status") == "rejected":
        shown, probability, subtype = "REJECTED", "     -", ""
    elif record.get("positive") is not None:  # a multi-label model: the positive findings, most probable first
        positive = record["positive"]
        shown = positive[0] if positive else "none"
        probability = f"{probabilities[positive[0]] if positive else probabilities[top]:6.1%}"
        subtype = ("+ " + ", ".join(positive[1:])) if len(positive) > 1 else ""
    else:
        shown = finding + ("?" if record.get("status") == "uncertain" else "")
        probability = f"{record.get('finding_probability') or probabilities[top]:6.1%}"
        subtype = top if top != finding else ""
    ms = latency_ms if latency_ms is not None else record["latency_ms"]["total"]
    warn = "  (" + "; ".join(record["warnings"]) + ")" if record.get("warnings") else ""
    return f"{clock}  {name:<{NAME_WIDTH}}  {shown:<10} {probability}  {subtype:<19} {ms:7.1f} ms{printable(warn)}"


class LiveSummary:
    """Counts since start and the median latency of the most recent results (bounded: a service runs for months)."""

    def __init__(self, window: int = 1000) -> None:
        self.classified = 0
        self.uncertain = 0
        self.rejected = 0
        self.failed = 0
        self.repeated = 0
        self._recent_ms: deque[float] = deque(maxlen=window)

    def add(self, record: dict[str, Any], latency_ms: float | None = None) -> None:
        if record.get("error") is None:
            status = record.get("status", "classified")
            setattr(self, status, getattr(self, status) + 1)
            self._recent_ms.append(latency_ms if latency_ms is not None else record["latency_ms"]["total"])
        else:
            self.failed += 1

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self._recent_ms) if self._recent_ms else None

    def line(self) -> str:
        median = f", median {self.median_ms:.1f} ms" if self.median_ms is not None else ""
        repeated = f", {self.repeated} already done" if self.repeated else ""
        doubtful = "".join(f", {n} {name}" for name, n in (("uncertain", self.uncertain),
                                                           ("rejected", self.rejected)) if n)
        return f"{self.classified} classified{doubtful}, {self.failed} failed{repeated}{median}"

    def as_dict(self) -> dict[str, Any]:
        return {"classified": self.classified, "uncertain": self.uncertain, "rejected": self.rejected,
                "failed": self.failed, "already_done": self.repeated, "median_ms": self.median_ms}
