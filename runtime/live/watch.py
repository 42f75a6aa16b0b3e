"""A watched folder: every image dropped into IN_DIR gets exactly one result under OUT_DIR, whatever happens.

Life of a file (each step survives a crash or ``kill -9`` at any moment; a restart repeats what was unfinished):
1. *Arrival*: with inotify (through watchdog) a file is complete when its writer closes it after its last write
   or renames it into the folder; a write after a close makes it incomplete again. Without inotify events (the
   polling mode, files there before the watcher started, or a file that gets no event for `QUIET_S`) it is
   complete when its size and time stamp stop changing for `settle_s`. Writers' temporary names (``*.part``,
   ``*.tmp``, dot-files) are ignored.
2. *Claim*: the file moves to ``OUT_DIR/processing/``, so a second watcher or a restart cannot take it twice.
3. *Result*: ``OUT_DIR/results/<name>.<sha256[:16]>.json`` is written atomically; it names where the input goes.
   Its key is the input's name and content, so an input that already has a result never gets a second one.
4. *Done*: the input moves to ``OUT_DIR/done/``, or to ``OUT_DIR/failed/`` next to ``<name>.reason.txt``.
   Nothing is overwritten: a taken name becomes ``name (2).ext``.
5. *Second look*: a finished input that still changes within `SECOND_LOOK_S` (a writer that paused longer than
   the settle time, then went on writing through its open handle) is taken again once it settles, and gets a
   new result that names the one it replaces. A half-written image is never the last word.

When the output folder cannot be written (read-only, full, gone), the watcher says so once, leaves every input
where it is and retries every few seconds until it can write again; it never exits for it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import CxrEdgeError, os_reason, printable
from ..files import (
    fit_name,
    free_name,
    move_to,
    private_dir,
    remove_stale_temps,
    same_file,
    utc_now,
    warn_if_open,
    write_atomic,
)
from ..model.classifier import Classifier
from ..model.model_file import file_sha256
from ..monitoring.drift import DriftConfig
from ..monitoring.live import DriftStep, open_monitor
from ..outputs.health import Heartbeat
from ..outputs.outbox import Destination, Outbox
from ..outputs.records import LiveSummary, live_record
from ..outputs.reports import SR_KINDS
from ..outputs.steps import Outcome, OutputOptions, live_steps
from ..outputs.trail import AuditTrail

__all__ = ["FolderWatcher", "WatchLayout", "is_ignored", "result_name", "IGNORED_SUFFIXES"]

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".part", ".tmp", ".temp", ".partial", ".crdownload", ".filepart", ".download", ".swp", "~")
"""Names writers use while a file is incomplete; such files are left alone until renamed."""

RESCAN_S = 2.0
"""With inotify, the folder is still listed this often, in case an event was lost (queue overflow, NFS)."""

QUIET_S = 30.0
"""With inotify, a file that has neither been closed nor renamed in, and has not changed for this long, is taken
anyway (its close event was lost, or it arrived by a hard link). A writer that pauses longer is caught by the
second look."""

CREATED_GRACE_S = 0.2
"""A file created in the folder and not opened within this time was renamed or linked in whole."""

SECOND_LOOK_S = 600.0
"""How long a finished input is watched for changes that show its writer had not finished."""

SECOND_LOOK_MAX = 20_000
"""At most this many recent inputs are under a second look (each costs one stat per second)."""

OUTPUT_RETRY_S = (2.0, 30.0)
"""First and longest wait between attempts to write to an output folder that refused (doubling in between)."""

OUTBOX_DRAIN_S = 30.0
"""With ``--once``, how long the watcher waits for the outbox to deliver before it exits (what is left stays
pending for the next run)."""

OUTPUT_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO,
                           errno.ENOENT})
"""Failures that mean the output folder (not one input) is the problem: waited out, never fatal."""


def is_ignored(name: str) -> bool:
    """Dot-files and writers' temporary names are not inputs (yet)."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


def output_name(name: str, sha256: str) -> str:
    """``<input name>.<first 16 hex of its SHA-256>``: what every output of one input (name and content) is named
    after."""
    return f"{fit_name(name, 40)}.{sha256[:16]}"


def result_name(name: str, sha256: str) -> str:
    """``<input name>.<first 16 hex of its SHA-256>.json``: one result per name and content."""
    return output_name(name, sha256) + ".json"


class WatchLayout:
    """The folders under OUT_DIR."""

    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        self.processing = out_dir / "processing"
        self.done = out_dir / "done"
        self.failed = out_dir / "failed"
        self.results = out_dir / "results"
        self.cam = out_dir / "cam"
        self.sr = out_dir / "sr"

    def create(self, *extra: Path) -> None:
        warn_if_open(self.out)
        for folder in (self.processing, self.done, self.failed, self.results, *extra):
            private_dir(folder)
            remove_stale_temps(folder)


class FolderWatcher:
    """Classify every file that arrives in a folder, exactly once.

    Args:
        in_dir: the folder the X-ray console writes to (only its top level is watched).
        out_dir: where results, processed inputs and failures go (created if missing; may not be `in_dir`).
        classifier: an opened classifier.
        outputs: what else to write per input (heatmap, Secondary Capture, report, FHIR), as every mode takes it;
            reports (`OutputOptions.sr`) are written for DICOM inputs only, tid1500 by default with `forward`.
        settle_s: a file whose size and time stamp have not changed for this long is complete.
        poll_s: list the folder this often instead of using inotify (network filesystems); None uses inotify and
            falls back to polling every second if inotify is unavailable.
        on_record: called with each result record (and whether it was already there) as it is written.
        on_idle: called when the folder has no more complete files after some were processed.
        forward: send the reports and captures of DICOM inputs to these Storage SCPs from a durable outbox
            (`cxr_edge.runtime.outputs.outbox`).
    """

    def __init__(self, in_dir: str | Path, out_dir: str | Path, classifier: Classifier, *,
                 outputs: OutputOptions = OutputOptions(), settle_s: float = 1.0, poll_s: float | None = None,
                 on_record: Callable[[dict[str, Any], bool], None] | None = None,
                 on_idle: Callable[[LiveSummary], None] | None = None,
                 forward: Sequence[Destination] = ()) -> None:
        self.in_dir = Path(in_dir).absolute()
        self.layout = WatchLayout(Path(out_dir))
        if not self.in_dir.is_dir():
            raise CxrEdgeError(f"{self.in_dir}: not a folder")
        if self.layout.out.exists() and same_file(self.in_dir, self.layout.out):
            raise CxrEdgeError(f"{self.in_dir}: the output folder must not be the watched folder")
        if (outputs.cam or outputs.sc) and not classifier.has_cam:
            raise CxrEdgeError(f"{classifier.path}: the model has no 'cam' output, so it cannot draw heatmaps")
        if outputs.sr is not None and outputs.sr not in SR_KINDS:
            raise CxrEdgeError(f"SR kind {outputs.sr!r}: expected one of {', '.join(SR_KINDS)}")
        if forward and outputs.sr is None:
            outputs = replace(outputs, sr="tid1500")  # forwarding sends reports: make them
        self.classifier = classifier
        self.options = outputs
        self.trail = AuditTrail(self.layout.out / "audit")
        self.outbox = Outbox(self.layout.out, list(forward), trail=self.trail) if forward else None
        self.drift = open_monitor(self.layout.out, DriftConfig.for_baseline(outputs.drift_baseline))
        self.heartbeat = Heartbeat(self.layout.out, "watch", self._snapshot)
        self.outputs = live_steps(self.layout.out, outputs, classifier, outbox=self.outbox, heartbeat=self.heartbeat,
                                  trail=self.trail, watchers=[DriftStep(self.drift, self.layout.out, trail=self.trail)],
                                  record_path=lambda outcome: self.layout.results / f"{outcome.name}.json")
        self._waiting = 0
        self._last_arrival: str | None = None
        self._last_result: str | None = None
        self.settle_s = settle_s
        self.poll_s = poll_s
        self.on_record = on_record
        self.on_idle = on_idle
        self.summary = LiveSummary()
        self.mode = "polling" if poll_s else "inotify"
        self.ready = threading.Event()  # set once the watcher listens for arrivals
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._events: dict[str, tuple[str, float]] = {}  # name -> (what inotify last said of it, when)
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}  # name -> ((size, mtime), unchanged since)
        self._refused: set[str] = set()  # names that could not be claimed (permissions); retried when changed
        self._present_at_start: set[str] | None = None  # names listed before any event could be seen
        self._finished: dict[Path, _Finished] = {}  # inputs under a second look
        self.blocked: str | None = None  # why the output folder cannot be written, while it cannot
        self._retry_s = OUTPUT_RETRY_S[0]
        self._looked = 0.0

    # --- control -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask `run` to return after the image in hand (safe from a signal handler or another thread)."""
        self._stop.set()
        self._wake.set()

    def note_event(self, name: str, kind: str) -> None:
        """What inotify said of `name`: ``created``, ``opened``, ``modified``, ``closed`` (after writing),
        ``closed_no_write`` or ``moved`` (renamed to it within the folder).

        A file is complete once closed after writing or renamed in; a file that was created and never opened
        was moved or linked in from elsewhere, whole. A write after a close makes it incomplete again.
        """
        now = time.monotonic()
        with self._lock:
            state = self._events.get(name, ("", now))[0]
            if kind in ("closed", "moved"):
                self._events[name] = ("complete", now)
            elif kind == "closed_no_write":
                if state in ("created", "opened"):  # read by someone, never written: it arrived whole
                    self._events[name] = ("complete", now)
            elif kind == "created":
                self._events[name] = ("created", now)
            elif kind == "opened":
                if state != "writing":
                    self._events[name] = ("opened", now)
            elif kind == "modified":
                self._events[name] = ("writing", now)
        self._wake.set()

    def _complete_by_events(self, now: float) -> set[str]:
        with self._lock:
            return {name for name, (state, since) in self._events.items()
                    if state == "complete" or (state == "created" and now - since >= CREATED_GRACE_S)}

    def run(self, *, once: bool = False) -> LiveSummary:
        """Recover what a previous run left, then classify arrivals until `stop` (or, with `once`, until idle)."""
        self._present_at_start = {entry.name for entry in _listing(self.in_dir)}  # before any event can be seen
        observer = None if (self.poll_s or once) else self._start_observer()
        self._guarded(self._start)
        self.ready.set()
        busy = False
        if self.layout.out.is_dir():
            self.heartbeat.start()
        if self.outbox is not None:
            self.outbox.start()
        try:
            while not self._stop.is_set():
                if self.blocked is not None:
                    if self._stop.wait(self._retry_s):
                        break
                    self._retry_s = min(2 * self._retry_s, OUTPUT_RETRY_S[1])
                    if self._guarded(self._start):
                        self.blocked = None
                        log.warning("%s can be written again: continuing", self.layout.out)
                    continue
                ready, waiting = self._scan()
                self._waiting = len(ready) + waiting
                for path in ready:
                    if self._stop.is_set() or not self._guarded(self._take, path):
                        break
                changing = self.blocked is None and self._guarded(self._second_look)
                if ready and self.blocked is None:
                    busy = True
                    continue
                if busy and self.on_idle is not None:
                    self.on_idle(self.summary)
                busy = False
                if once and not waiting and self.blocked is None:
                    break
                interval = min(0.1, self.settle_s / 4) if waiting or changing else (self.poll_s or RESCAN_S)
                self._wake.wait(interval)
                self._wake.clear()
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)
            if self.outbox is not None:
                if once:
                    self.outbox.wait_empty(timeout=OUTBOX_DRAIN_S)
                self.outbox.stop()
            self.heartbeat.stop()
            try:
                self.trail.record("stop", mode="watch", counts=self.summary.as_dict())
            except OSError as exc:  # an output folder that refuses writing was said so already
                log.debug("no audit record of the stop: %s", exc)
        return self.summary

    def _snapshot(self) -> dict[str, Any]:
        """What `status.json` says beside mode and times (inputs are named by file name only)."""
        return {"watching": str(self.in_dir), "model": self.classifier.path.name, "queue": self._waiting,
                "last_arrival": self._last_arrival, "last_result": self._last_result,
                "counts": self.summary.as_dict(), "blocked": self.blocked, "drift": self.drift.status(),
                "outbox_backlog": self.outbox.backlog() if self.outbox is not None else None}

    def _start(self) -> bool:
        self.trail.record("start", mode="watch", watching=str(self.in_dir), model=self.classifier.path.name,
                          sr=self.options.sr, sc=self.options.sc, cam=self.options.cam,
                          fhir=self.options.fhir is not None, keep_phi=self.options.keep_phi,
                          forward=[str(d) for d in self.outbox.destinations] if self.outbox else [])
        extra = [self.layout.cam] * (self.options.cam or self.options.sc) + [self.layout.out / "sc"] * self.options.sc
        extra += [self.layout.sr] * bool(self.options.sr) + [self.options.fhir] * (self.options.fhir is not None)
        self.layout.create(*extra)
        self._recover()
        return True

    def _guarded(self, step: Callable[..., Any], *args: Any) -> Any:
        """Run one step; if the output folder refuses (read-only, full, removed), say so once and return False,
        leaving every file where the step found it, for `run` to retry."""
        try:
            result = step(*args)
        except OSError as exc:
            if exc.errno not in OUTPUT_ERRNOS:
                raise
            if self.blocked is None:
                log.warning("cannot write to %s (%s): waiting, retrying every few seconds; no input is lost",
                            self.layout.out, os_reason(exc, exc.filename or self.layout.out))
                self._retry_s = OUTPUT_RETRY_S[0]
            self.blocked = os_reason(exc, exc.filename or self.layout.out)
            return False
        return True if result is None else result

    # --- arrival -------------------------------------------------------------------------------------------
    def _start_observer(self) -> Any:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory:
                    return
                if event.event_type == "moved":
                    watcher.note_event(os.path.basename(os.fsdecode(event.dest_path)), "moved")
                elif event.event_type != "deleted":
                    watcher.note_event(os.path.basename(os.fsdecode(event.src_path)), event.event_type)

        observer = Observer()
        try:
            observer.schedule(Handler(), str(self.in_dir), recursive=False)
            observer.start()
        except OSError as exc:  # inotify limits reached, or a filesystem without inotify
            log.warning("inotify unavailable for %s (%s); listing the folder every second instead", self.in_dir, exc)
            self.poll_s, self.mode = 1.0, "polling"
            return None
        return observer

    def _scan(self) -> tuple[list[Path], int]:
        """Files that are complete (oldest first), and how many are still being written."""
        now = time.monotonic()
        listing: dict[str, tuple[int, int]] = {}
        try:
            with os.scandir(self.in_dir) as entries:
                for entry in entries:
                    if is_ignored(entry.name):
                        continue
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    listing[entry.name] = (info.st_size, info.st_mtime_ns)
        except OSError as exc:
            log.error("cannot list %s: %s; retrying", self.in_dir, exc)
            return [], 1
        with self._lock:
            # events newer than the listing are kept: the file may have appeared after it was taken
            self._events = {n: e for n, e in self._events.items() if n in listing or e[1] >= now}
        completed = self._complete_by_events(now)
        self._seen = {n: s for n, s in self._seen.items() if n in listing}
        self._refused &= set(listing)
        self._present_at_start = (self._present_at_start or set()) & set(listing)
        events = self.mode == "inotify" and not self.poll_s
        ready, waiting = [], 0
        for name, signature in listing.items():
            previous = self._seen.get(name)
            if previous is None or previous[0] != signature:
                self._seen[name] = (signature, now)
                self._refused.discard(name)
                since = now
            else:
                since = previous[1]
            if name in self._refused:
                continue
            settle = QUIET_S if events and name not in self._present_at_start else self.settle_s
            if name in completed or now - since >= max(settle, self.settle_s):
                ready.append((signature[1], name))
            else:
                waiting += 1
        return [self.in_dir / name for _, name in sorted(ready)], waiting

    def _forget(self, name: str) -> None:
        with self._lock:
            self._events.pop(name, None)
        self._seen.pop(name, None)

    # --- claim, classify, finish ---------------------------------------------------------------------------
    def _take(self, path: Path) -> None:
        arrived = self._last_arrival = utc_now()
        self.classifier.warm()  # while the file is claimed, hashed and decoded
        target = self.layout.processing / path.name  # the input's own name: a restart recovers it from there
        if target.exists():
            target = self.layout.processing / free_name(self.layout.processing, path.name)
        try:
            move_to(path, target)
        except FileNotFoundError:
            if not self.layout.processing.is_dir():
                raise  # the output folder went away: wait for it
            self._forget(path.name)
            return  # taken away by its writer (or another watcher) before we claimed it
        except OSError as exc:
            if not os.access(self.layout.processing, os.W_OK) or exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # the output side refuses: waited out by run
            log.error("%s: cannot move it out of the watched folder (%s); leaving it there until it changes", path,
                      os_reason(exc, path))
            self._refused.add(path.name)
            return
        self._forget(path.name)
        self._process(target, arrived)

    def _recover(self) -> None:
        """Finish what an interrupted run left: half-done claims first, then everything in processing/."""
        for claimed in sorted(self.layout.processing.iterdir()):
            original = self.in_dir / claimed.name
            if same_file(original, claimed):
                original.unlink()
        leftovers = sorted(p for p in self.layout.processing.iterdir() if p.is_file())
        if leftovers:
            log.warning("finishing %d file(s) left in %s", len(leftovers), self.layout.processing)
        for claimed in leftovers:
            self._process(claimed, utc_now())

    def _process(self, claimed: Path, arrived: str, replaces: str | None = None) -> None:
        sha256 = file_sha256(claimed)
        name = output_name(claimed.name, sha256)
        result = self.layout.results / f"{name}.json"
        repeated = result.exists()
        if repeated:  # an earlier run's result: only its outputs that a crash cut short are written
            record = json.loads(result.read_text())
            self.summary.repeated += 1
            self._last_result = utc_now()  # this arrival's, not the first result's
            self.outputs.deliver(Outcome(None, record, name, claimed, self.classifier.contract), recorded=True)
        else:
            self.trail.record("instance-received", sha256=sha256, arrived=arrived)
            prediction = self.classifier.predict([claimed], cam=self.options.cam or self.options.sc)[0]
            failed = prediction.error is not None
            folder = self.layout.failed if failed else self.layout.done
            moved = free_name(folder, claimed.name, companions=(".reason.txt",) if failed else ())
            extra = {"replaces": replaces} if replaces is not None else {}
            if self.options.keep_phi and prediction.patient:
                extra["patient"] = prediction.patient
            record = live_record(prediction, path=str(self.in_dir / claimed.name), sha256=sha256, arrived=arrived,
                                 finished=utc_now(), model=self.classifier.path.name,
                                 moved_to=f"{folder.name}/{moved}", **extra)
            self._last_result = record["finished"]
            self.summary.add(record)
            self.outputs.deliver(Outcome(prediction, record, name, claimed, self.classifier.contract))
        moved = self._finish(claimed, record)
        self._finished[moved] = _Finished(_signature(moved), time.monotonic(), claimed.name, result.name)
        if self.on_record is not None:
            self.on_record(record, repeated)

    def _second_look(self) -> bool:
        """Take again a finished input that changed after its result (its writer had only paused); returns
        whether any is still changing."""
        now = time.monotonic()
        if now - self._looked < 1.0 and not any(seen.changed for seen in self._finished.values()):
            return False
        self._looked = now
        while len(self._finished) > SECOND_LOOK_MAX:
            del self._finished[next(iter(self._finished))]  # the oldest: a busy day's worth is still watched
        changing = False
        for path, seen in list(self._finished.items()):
            signature = _signature(path)
            if signature is None or now - seen.since > SECOND_LOOK_S:
                del self._finished[path]  # moved away by a user, or long stable
                continue
            if signature == seen.signature:
                if seen.changed and now - seen.since >= self.settle_s:
                    del self._finished[path]
                    log.warning("%s changed after its result: classifying it again", printable(seen.name))
                    self._retake(path, seen)
                continue
            self._finished[path] = _Finished(signature, now, seen.name, seen.result, changed=True)
            changing = True
        return changing or any(seen.changed for seen in self._finished.values())

    def _retake(self, path: Path, seen: _Finished) -> None:
        target = self.layout.processing / free_name(self.layout.processing, seen.name)
        move_to(path, target)
        path.with_name(path.name + ".reason.txt").unlink(missing_ok=True)  # it spoke of the half-written file
        self._process(target, utc_now(), replaces=seen.result)

    def _finish(self, claimed: Path, record: dict[str, Any]) -> Path:
        target = self.layout.out / record["moved_to"]
        failed = record["error"] is not None
        if target.exists() and not same_file(claimed, target):  # an identical input dropped again
            target = target.parent / free_name(target.parent, claimed.name,
                                               companions=(".reason.txt",) if failed else ())
        if failed:
            reason = target.with_name(target.name + ".reason.txt")
            write_atomic(reason, f"{record['path']}: {record['error']}\n".encode(errors="backslashreplace"))
        return move_to(claimed, target)


@dataclass(frozen=True)
class _Finished:
    """A finished input under a second look: its (size, mtime) when last seen and since when."""

    signature: tuple[int, int] | None
    since: float
    name: str
    result: str
    changed: bool = False


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _listing(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []
