"""Forwarding results to a PACS from a durable outbox: nothing is lost while the PACS is down, nothing doubled.

Every object to send (a report, a heatmap) is first linked or copied into
``OUT_DIR/outbox/<destination>/pending/`` (written atomically and synced), and only then is its result
considered delivered to the outbox. One sender thread per destination sends what is pending by C-STORE, oldest
first, and removes each file once the PACS answered Success (or a warning status). When the PACS cannot be
reached or refuses the association, the sender waits and tries again with exponential backoff (1 s doubling up to
`MAX_BACKOFF_S`), for as long as it takes; a restart, even after ``kill -9``, finds the pending files where they
were. An object the PACS refuses for what it is (a failure status such as "SOP class not supported") will not
be accepted by retrying: it moves to ``refused/`` with the reason beside it, and the rest goes on.

A crash between the PACS's Success and the removal sends that one object again; it carries the same SOP
Instance UID (reports and heatmaps derive their UIDs from the image and the model), so the PACS files it as the
same instance, not a second one.

``outbox/<destination>/status.json`` says what the sender is doing: backlog, sent and refused counts, the last
success and the last error with the time of the next attempt. The status page and ``journalctl`` read it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CxrEdgeError, first_line
from ..files import (
    TEMP_PREFIX,
    fit_name,
    free_name,
    fsync_dir,
    private_dir,
    remove_stale_temps,
    replace_json,
    utc_now,
    write_atomic,
)
from .ae_title import valid_ae_title
from .stow import WebDestination, store

__all__ = ["Destination", "Outbox", "parse_destination", "MAX_BACKOFF_S", "outbox_status"]

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 15.0
"""The longest wait between two attempts to reach a PACS that is down: a PACS back after an outage gets its
backlog within this time, and one connection attempt every 15 s costs a PACS that is down nothing."""

CONNECT_TIMEOUT_S = 10.0
"""Seconds to open a connection and to hear the association answer."""

_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    """A PACS (or any Storage SCP): its AE title, host and port, and the TLS to reach it with (None: plain TCP)."""

    ae_title: str
    host: str
    port: int
    tls: Any = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        """A folder name for this destination."""
        return re.sub(r"[^A-Za-z0-9.\-]", "_", f"{self.ae_title}@{self.host}_{self.port}")

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AE@host:port`` (``AE@[::1]:104`` for IPv6) -> `Destination`; a clear error otherwise."""
    match = _DESTINATION.match(text.strip())
    if match is None:
        raise CxrEdgeError(f"forward destination {text!r}: expected AE@host:port, e.g. PACS@10.0.0.5:104")
    ae, port = match["ae"].strip(" "), int(match["port"])
    if (problem := valid_ae_title(ae)) is not None:
        raise CxrEdgeError(f"forward destination {text!r}: AE title {ae!r} is not valid: {problem}")
    if not 0 < port < 65536:
        raise CxrEdgeError(f"forward destination {text!r}: port {port} is out of range")
    return Destination(ae, match["host"].strip("[]"), port)


def outbox_status(out_dir: Path) -> list[dict[str, Any]]:
    """Every destination's ``status.json`` under ``OUT_DIR/outbox`` (for the status page)."""
    found = []
    for path in sorted((Path(out_dir) / "outbox").glob("*/status.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


class Outbox:
    """Durable forwarding to one or more destinations: C-STORE (`Destination`) or STOW-RS (`WebDestination`).

    Args:
        out_dir: the live mode's output folder; the outbox lives in ``out_dir/outbox``.
        destinations: where to send.
        calling_ae: this node's AE title towards the PACS.
    """

    def __init__(self, out_dir: Path, destinations: list[Destination], *, calling_ae: str = "CXREDGE",
                 trail: Any = None) -> None:
        self.root = Path(out_dir) / "outbox"
        self.calling_ae = calling_ae
        self.destinations = list(destinations)
        self._senders = [_Sender(self.root / d.key, d, calling_ae, trail) for d in destinations]

    def start(self) -> None:
        for sender in self._senders:
            sender.start()

    def stop(self) -> None:
        for sender in self._senders:
            sender.stop()

    def put(self, path: Path) -> None:
        """Queue a DICOM file for every destination (durably, before returning); the file itself stays."""
        for sender in self._senders:
            sender.put(path)

    def backlog(self) -> int:
        return sum(sender.backlog() for sender in self._senders)

    def wait_empty(self, timeout: float) -> bool:
        """True once nothing is pending for any destination (tests, and a draining shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.backlog() == 0:
                return True
            time.sleep(0.05)
        return False


class _Sender:
    """One destination's pending folder and the thread that empties it."""

    def __init__(self, folder: Path, destination: Destination, calling_ae: str, trail: Any = None) -> None:
        self.folder, self.destination, self.calling_ae, self.trail = folder, destination, calling_ae, trail
        self.pending, self.refused = folder / "pending", folder / "refused"
        for sub in (self.pending, self.refused):
            private_dir(sub)
            remove_stale_temps(sub)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._status: dict[str, Any] = {"destination": str(destination), "sent": 0, "refused": 0,
                                        "last_sent": None, "last_error": None, "last_error_at": None,
                                        "next_attempt": None}
        previous = folder / "status.json"
        if previous.exists():  # counts carry over a restart
            try:
                old = json.loads(previous.read_text())
                self._status.update({k: old.get(k) for k in ("sent", "refused", "last_sent")})
                self._status["sent"] = int(self._status["sent"] or 0)
                self._status["refused"] = int(self._status["refused"] or 0)
            except (OSError, ValueError):
                pass
        self._write_status()

    # --- the listener's side ---------------------------------------------------------------------------------
    def put(self, path: Path) -> None:
        target = self.pending / path.name  # one entry per object: queueing it again replaces, never doubles
        temp = self.pending / fit_name(f"{TEMP_PREFIX}{os.getpid()}-{target.name}")  # a restart removes leftovers
        try:
            os.link(path, temp)
        except OSError:
            shutil.copyfile(path, temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
        fsync_dir(self.pending)
        self._write_status()
        self._wake.set()

    def backlog(self) -> int:
        return sum(1 for p in self.pending.iterdir() if not p.name.startswith("."))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"cxr-forward-{self.destination.key}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=CONNECT_TIMEOUT_S + 5)

    # --- the sender thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            files = self._oldest_first()
            if not files:
                self._wake.wait(timeout=5.0)
                self._wake.clear()
                continue
            try:
                self._send(files)
                self._failures = 0
                self._status["next_attempt"] = None
            except Exception as exc:  # unreachable, or anything unforeseen: the files stay, the thread goes on
                self._failures += 1
                delay = min(MAX_BACKOFF_S, 2.0 ** (self._failures - 1))
                self._status.update(last_error=str(exc), last_error_at=utc_now(),
                                    next_attempt=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime(time.time() + delay)))
                if self._failures == 1 or self._failures % 10 == 0:
                    log.warning("forwarding to %s: %s; %d object(s) wait, next attempt in %.0f s",
                                self.destination, exc, len(files), delay)
                self._write_status()
                self._wake.wait(timeout=delay)
                self._wake.clear()
            self._write_status()

    def _oldest_first(self) -> list[Path]:
        entries = []
        for path in self.pending.iterdir():
            if not path.name.startswith("."):
                try:
                    entries.append((path.stat().st_mtime_ns, path))
                except OSError:
                    continue
        return [path for _, path in sorted(entries)]

    def _send(self, files: list[Path]) -> None:
        """Send pending files; raises `_Unreachable` (or `WebUnreachable`) when the PACS cannot take them now."""
        if isinstance(self.destination, WebDestination):
            self._stow(files)
        else:
            self._c_store(files)

    def _stow(self, files: list[Path]) -> None:
        """STOW-RS, one object per request: stored, refused for what it is, or everything stays pending."""
        for path in files:
            if self._stopping.is_set():
                return
            reason = store(self.destination, path)
            if reason is None:
                uid = _instance_uid(path)
                path.unlink(missing_ok=True)
                self._sent(uid)
            else:
                self._refuse(path, reason, None)
            self._write_status()

    def _sent(self, uid: str) -> None:
        self._status["sent"] += 1
        self._status["last_sent"] = utc_now()
        if self.trail is not None:
            self.trail.record("report-forwarded", destination=str(self.destination), sop_instance_uid=uid,
                              tls=self.destination.tls is not None)

    def _c_store(self, files: list[Path]) -> None:
        """Send pending files over one association."""
        import pydicom
        from pynetdicom import AE

        datasets: list[tuple[Path, Any]] = []
        for path in files:
            try:
                datasets.append((path, pydicom.dcmread(path)))
            except Exception as exc:  # not a DICOM file any more (disk damage): keep it aside, say so
                self._refuse(path, f"cannot be read: {first_line(exc)}", None)
        if not datasets:
            return
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = CONNECT_TIMEOUT_S
        ae.dimse_timeout = 60
        for sop_class in dict.fromkeys(str(ds.SOPClassUID) for _, ds in datasets):
            ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        tls = (self.destination.tls, self.destination.host) if self.destination.tls is not None else None
        assoc = ae.associate(self.destination.host, self.destination.port, ae_title=self.destination.ae_title,
                             tls_args=tls)
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "cannot connect (refused, unreachable or " \
                "no answer)"
            raise _Unreachable(f"{self.destination}: {reason}")
        try:
            accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
            for path, ds in datasets:
                if self._stopping.is_set():
                    break
                if str(ds.SOPClassUID) not in accepted:
                    self._refuse(path, f"the PACS does not accept SOP class {ds.SOPClassUID}", ds.SOPInstanceUID)
                    continue
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None) if status else None
                if code is None:
                    raise _Unreachable(f"{self.destination}: no answer to C-STORE of {ds.SOPInstanceUID}")
                if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
                    path.unlink(missing_ok=True)
                    self._sent(str(ds.SOPInstanceUID))
                elif 0xA700 <= code <= 0xA7FF:  # out of resources: try again later
                    raise _Unreachable(f"{self.destination}: out of resources (0x{code:04X})")
                else:
                    self._refuse(path, f"the PACS answered 0x{code:04X} to SOP Instance UID {ds.SOPInstanceUID}",
                                 ds.SOPInstanceUID)
                self._write_status()
        finally:
            if assoc.is_established:
                assoc.release()

    def _refuse(self, path: Path, reason: str, uid: object) -> None:
        log.error("forwarding to %s: %s refused: %s", self.destination, path.name, reason)
        if self.trail is not None:  # named by its UID: a file name may be made of a patient's
            self.trail.record("report-refused", destination=str(self.destination),
                              sop_instance_uid=str(uid) if uid else None, reason=reason)
        target = self.refused / free_name(self.refused, path.name, companions=(".reason.txt",))
        os.replace(path, target)
        write_atomic(target.with_name(target.name + ".reason.txt"), f"{reason}\n".encode())
        self._status["refused"] += 1

    def _write_status(self) -> None:
        self._status["backlog"] = self.backlog()
        self._status["updated"] = utc_now()
        try:
            replace_json(self.folder / "status.json", self._status)
        except OSError as exc:
            log.debug("cannot write %s: %s", self.folder / "status.json", exc)


def _instance_uid(path: Path) -> str | None:
    """The SOP Instance UID of a queued object (what the audit trail names it by; never its file name)."""
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    except Exception:
        return None


class _Unreachable(Exception):
    """The PACS cannot take objects now; everything stays pending."""
