"""``OUT_DIR/status.json``: what a running live mode is doing, for the status page and for monitoring.

The live mode rewrites it (atomically) every `INTERVAL_S` seconds and after every result: mode, process id,
start, last arrival and last result, queue length, counts since start, outbox backlog, the time of writing. A
reader that finds ``updated`` older than `STALE_S` knows the process is not running (or is stuck). It never holds
a patient identifier: inputs are named by file name or SOP Instance UID only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..files import replace_json, utc_now

__all__ = ["Heartbeat", "STATUS_FILE", "INTERVAL_S", "STALE_S"]

STATUS_FILE = "status.json"
INTERVAL_S = 2.0
STALE_S = 10.0
"""A status older than this means the live mode is not running."""


class Heartbeat:
    """Writes ``OUT_DIR/status.json`` from `snapshot` every `INTERVAL_S` seconds and on `beat`.

    Args:
        out_dir: the live mode's output folder.
        mode: ``watch`` or ``dicom-listen``.
        snapshot: returns the mode's current figures (a JSON-ready dict).
    """

    def __init__(self, out_dir: Path, mode: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.path = Path(out_dir) / STATUS_FILE
        self.base = {"mode": mode, "pid": os.getpid(), "started": utc_now()}
        self.snapshot = snapshot
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="cxr-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, *, running: bool = False) -> None:
        """Stop writing; the last status says the mode stopped (unless `running`, for a crash-like test)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.beat(state="running" if running else "stopped")

    def beat(self, state: str = "running") -> None:
        with self._lock:
            try:
                replace_json(self.path, self.base | {"state": state, "updated": utc_now()} | self.snapshot())
            except OSError:
                pass  # a full or read-only disk is reported by the mode itself

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            self.beat()
