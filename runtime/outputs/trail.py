"""The audit trail: who sent what to whom, one JSON line per event, in ``OUT_DIR/audit/audit.jsonl`` (the role of
IHE ATNA's audit record in a hospital).

Events: the configuration a mode started with, associations accepted and refused (calling AE title, peer
address), instances received, results written, reports forwarded or refused by a PACS, logins to the status page
accepted or refused. Images are named by SOP Instance UID, or by their SHA-256 where they have none, never by
patient name or ID (nor by a file name, which a console may have made of them). Each line is appended and synced
before the call returns; the file is rotated by size (``audit.jsonl.1`` ... ``.N``), private like every output.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from ..files import make_private, private_dir, utc_now

__all__ = ["AuditTrail", "read_trail", "render_trail", "since_time", "EVENTS", "TRAIL_FILE"]

TRAIL_FILE = "audit.jsonl"
EVENTS = ("start", "stop", "association-accepted", "association-refused", "instance-received", "result-written",
          "report-forwarded", "report-refused", "login-accepted", "login-refused", "drift-alarm", "drift-alarm-end",
          "drift-device")
"""Every event the trail records."""
FORBIDDEN = ("patient", "PatientName", "PatientID", "name", "path")
"""Fields an event may never carry."""


class AuditTrail:
    """Appends events to ``FOLDER/audit.jsonl`` durably; rotates it past `max_bytes`, keeping `keep` old files."""

    def __init__(self, folder: Path, *, max_bytes: int = 10 * 2**20, keep: int = 10) -> None:
        self.folder = Path(folder)  # made at the first event: an output folder may not be writable yet
        self.path = self.folder / TRAIL_FILE
        self.max_bytes, self.keep = max_bytes, keep
        self._lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> None:
        """One event, written whole and synced. Unknown events and patient fields are refused (a programming
        error, never a user's input)."""
        if event not in EVENTS or any(key in FORBIDDEN for key in fields):
            raise ValueError(f"audit event {event!r} with fields {sorted(fields)} is not allowed")
        line = (json.dumps({"at": utc_now(), "event": event, "pid": os.getpid(), **fields}) + "\n").encode()
        with self._lock:
            private_dir(self.folder)
            self._rotate(len(line))
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                make_private(descriptor)
                os.write(descriptor, line)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

    def _rotate(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + incoming <= self.max_bytes:
            return
        for number in range(self.keep - 1, 0, -1):
            older = self.folder / f"{TRAIL_FILE}.{number}"
            if older.exists():
                older.replace(self.folder / f"{TRAIL_FILE}.{number + 1}")
        self.path.replace(self.folder / f"{TRAIL_FILE}.1")
        (self.folder / f"{TRAIL_FILE}.{self.keep + 1}").unlink(missing_ok=True)


def read_trail(folder: Path, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Every event in `folder` (rotated files first, oldest first), from `since` on; damaged lines are skipped."""
    files = sorted(folder.glob(f"{TRAIL_FILE}.*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    for path in [*files, folder / TRAIL_FILE]:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                event = json.loads(line)
                when = datetime.fromisoformat(event["at"])
            except (ValueError, KeyError, TypeError):
                continue
            if since is None or when >= since:
                yield event


def since_time(text: str | None) -> datetime | None:
    """``--since``: an ISO date or time (UTC where no zone is given), or a span back from now (``30m``, ``12h``,
    ``7d``); None for everything."""
    import re
    from datetime import UTC, timedelta

    from ..errors import CxrEdgeError

    if text is None:
        return None
    span = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if span:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[span[2]]
        return datetime.now(UTC) - timedelta(**{unit: int(span[1])})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CxrEdgeError(f"--since {text!r}: give an ISO date or time, or a span such as 30m, 12h or 7d") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def render_trail(events: list[dict[str, Any]], console: Any) -> None:
    """The events as a table: time, event, and its details as key=value."""
    from rich.markup import escape
    from rich.table import Table

    from ..errors import printable

    table = Table(title=f"audit trail: {len(events)} events", title_justify="left")
    for column in ("time", "event", "details"):
        table.add_column(column, no_wrap=column != "details", overflow="fold")
    for event in events:
        details = "  ".join(f"{key}={value}" for key, value in event.items()
                            if key not in ("at", "event", "pid") and value not in (None, [], {}, ""))
        table.add_row(event["at"][:19].replace("T", " "), event["event"], escape(printable(details)))
    console.print(table)
