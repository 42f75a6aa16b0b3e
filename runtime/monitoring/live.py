"""Drift monitoring inside a live mode: one output step that feeds every result to a `DriftMonitor`.

The baseline is the site's own first results, kept in ``OUT_DIR/drift/baseline.json`` once complete, so that a
restarted service judges against the same beginning rather than learning a new one from whatever arrives after
the restart. An alarm is said once when it starts and once when it ends (and written to the audit trail); the
monitor's state goes into ``status.json`` for the status page.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..files import make_private, private_dir, replace_bytes
from ..outputs.steps import Outcome, Step
from .drift import DriftConfig, DriftMonitor

__all__ = ["DriftStep", "open_monitor", "BASELINE_FILE", "HISTORY_FILE", "describe", "read_history"]

log = logging.getLogger(__name__)

BASELINE_FILE = Path("drift") / "baseline.json"
HISTORY_FILE = Path("drift") / "history.jsonl"
HISTORY_MAX_BYTES = 4 * 1024 * 1024
"""About 20,000 points (a busy site's several weeks at one point per ten results); the older half then goes."""


def open_monitor(out: Path, config: DriftConfig | None = None) -> DriftMonitor:
    """The monitor of an output folder: its saved baseline if there is one, else a new one that will learn it."""
    saved = out / BASELINE_FILE
    if saved.is_file():
        try:
            return DriftMonitor.from_baseline(saved)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable drift baseline (%s); learning a new one", saved, exc)
    return DriftMonitor(config or DriftConfig())


class DriftStep(Step):
    """Feed each result to the monitor; say alarms and new devices; keep the baseline once it is complete.

    Args:
        monitor: the mode's `DriftMonitor`.
        out: the mode's output folder (the baseline goes under it).
        say: how a line is told (a warning in the mode's log, by default).
        trail: the audit trail, or None.
    """

    def __init__(self, monitor: DriftMonitor, out: Path, say: Callable[[str], None] = log.warning,
                 trail: Any = None) -> None:
        self.monitor, self.out, self.say, self.trail = monitor, out, say, trail
        self._lock = threading.Lock()  # results may finish on several threads

    def finish(self, outcome: Outcome) -> None:
        with self._lock:
            complete = self.monitor.reference is not None
            changes = self.monitor.add(outcome.record)
            if not complete and self.monitor.reference is not None:
                self._keep_baseline()
            due = self.monitor.latest and self.monitor.seen % max(1, self.monitor.config.window // 4) == 0
            if changes or due:
                self._history({"at": outcome.record.get("finished"), "seen": self.monitor.seen,
                               "statistics": {k: round(v, 3) for k, v in self.monitor.latest.items()},
                               "alarms": sorted(self.monitor.active), "changes": changes})
        for change in changes:
            self.say(describe(change))
            if self.trail is not None:
                self.trail.record(f"drift-{change['kind']}", **{k: v for k, v in change.items() if k != "kind"})

    def _history(self, point: dict[str, Any]) -> None:
        """One line of ``drift/history.jsonl``: what the status page draws the last days from."""
        path = self.out / HISTORY_FILE
        try:
            private_dir(path.parent)
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                make_private(descriptor)
                os.write(descriptor, (json.dumps(point) + "\n").encode())
            finally:
                os.close(descriptor)
            if path.stat().st_size > HISTORY_MAX_BYTES:  # keep the newer half
                lines = path.read_bytes().splitlines(keepends=True)
                replace_bytes(path, b"".join(lines[len(lines) // 2:]))
        except OSError as exc:
            log.debug("%s: drift history not written (%s)", path, exc)

    def _keep_baseline(self) -> None:
        path = self.out / BASELINE_FILE
        try:
            private_dir(path.parent)
            self.monitor.save_baseline(path)
        except OSError as exc:
            log.warning("%s: the drift baseline could not be kept (%s)", path, exc)
        self.say(f"drift: baseline of {len(self.monitor.baseline_rows)} results complete; monitoring from now on")


def describe(change: dict[str, Any]) -> str:
    """One line for a log: an alarm starting or ending, or a new device."""
    if change["kind"] == "device":
        return f"drift: new device at result {change['index']}: {change['device']}"
    if change["kind"] == "alarm":
        return (f"drift ALARM: {change['signal']} at result {change['index']} (statistic {change['statistic']:.1f}, "
                f"threshold {change['threshold']:.1f}): the images differ from the site's baseline")
    return f"drift: {change['signal']} back within its threshold at result {change['index']}"



def read_history(out: Path, since: str | None = None, limit: int = 2000) -> list[dict[str, Any]]:
    """The drift history's points from `since` (ISO time) on, the newest `limit` of them; [] where none."""
    try:
        lines = (out / HISTORY_FILE).read_text(encoding="utf-8").splitlines()[-limit:]
    except OSError:
        return []
    points = []
    for line in lines:
        try:
            point = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if since is None or (point.get("at") or "") >= since:
            points.append(point)
    return points
