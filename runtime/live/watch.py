"""A watched folder: every image dropped into IN_DIR gets exactly one result under OUT_DIR, whatever happens.

Life of a file (each step survives a crash or ``kill -9`` at any moment; a restart repeats what was unfinished):
1. *Arrival*: the file is complete when its writer closes it or renames it into the folder (inotify through
   watchdog), or when its size and time stamp stop changing for `settle_s` (the polling fallback, and files that
   were there before the watcher started). Writers' temporary names (``*.part``, ``*.tmp``, dot-files) are ignored.
2. *Claim*: the file moves to ``OUT_DIR/processing/``, so a second watcher or a restart cannot take it twice.
3. *Result*: ``OUT_DIR/results/<name>.<sha256[:16]>.json`` is written atomically; it names where the input goes.
   Its key is the input's name and content, so an input that already has a result never gets a second one.
4. *Done*: the input moves to ``OUT_DIR/done/``, or to ``OUT_DIR/failed/`` next to ``<name>.reason.txt``.
   Nothing is overwritten: a taken name becomes ``name (2).ext``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from ..cam import overlay
from ..classifier import Classifier
from ..errors import CxrEdgeError
from ..model_file import file_sha256
from .files import fit_name, free_name, move_to, remove_stale_temps, same_file, utc_now, write_atomic, write_json_atomic
from .results import LiveSummary, live_record

__all__ = ["FolderWatcher", "WatchLayout", "is_ignored", "result_name", "IGNORED_SUFFIXES"]

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".part", ".tmp", ".temp", ".partial", ".crdownload", ".filepart", ".download", ".swp", "~")
"""Names writers use while a file is incomplete; such files are left alone until renamed."""

RESCAN_S = 2.0
"""With inotify, the folder is still listed this often, in case an event was lost (queue overflow, NFS)."""


def is_ignored(name: str) -> bool:
    """Dot-files and writers' temporary names are not inputs (yet)."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


def result_name(name: str, sha256: str) -> str:
    """``<input name>.<first 16 hex of its SHA-256>.json``: one result per name and content."""
    return f"{fit_name(name, 40)}.{sha256[:16]}.json"


class WatchLayout:
    """The folders under OUT_DIR."""

    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        self.processing = out_dir / "processing"
        self.done = out_dir / "done"
        self.failed = out_dir / "failed"
        self.results = out_dir / "results"
        self.cam = out_dir / "cam"

    def create(self, cam: bool) -> None:
        for folder in (self.processing, self.done, self.failed, self.results) + ((self.cam,) if cam else ()):
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(folder)


class FolderWatcher:
    """Classify every file that arrives in a folder, exactly once.

    Args:
        in_dir: the folder the X-ray console writes to (only its top level is watched).
        out_dir: where results, processed inputs and failures go (created if missing; may not be `in_dir`).
        classifier: an opened classifier.
        cam: also write a heatmap overlay per image to ``OUT_DIR/cam/``.
        settle_s: a file whose size and time stamp have not changed for this long is complete.
        poll_s: list the folder this often instead of using inotify (network filesystems); None uses inotify and
            falls back to polling every second if inotify is unavailable.
        on_record: called with each result record (and whether it was already there) as it is written.
        on_idle: called when the folder has no more complete files after some were processed.
    """

    def __init__(self, in_dir: str | Path, out_dir: str | Path, classifier: Classifier, *, cam: bool = False,
                 settle_s: float = 1.0, poll_s: float | None = None,
                 on_record: Callable[[dict[str, Any], bool], None] | None = None,
                 on_idle: Callable[[LiveSummary], None] | None = None) -> None:
        self.in_dir = Path(in_dir).absolute()
        self.layout = WatchLayout(Path(out_dir))
        if not self.in_dir.is_dir():
            raise CxrEdgeError(f"{self.in_dir}: not a folder")
        if self.layout.out.exists() and same_file(self.in_dir, self.layout.out):
            raise CxrEdgeError(f"{self.in_dir}: the output folder must not be the watched folder")
        if cam and not classifier.has_cam:
            raise CxrEdgeError(f"{classifier.path}: the model has no 'cam' output, so --cam cannot draw heatmaps")
        self.classifier = classifier
        self.cam = cam
        self.settle_s = settle_s
        self.poll_s = poll_s
        self.on_record = on_record
        self.on_idle = on_idle
        self.summary = LiveSummary()
        self.mode = "polling" if poll_s else "inotify"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._completed: dict[str, float] = {}  # names whose writer closed them or renamed them in
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}  # name -> ((size, mtime), unchanged since)
        self._refused: set[str] = set()  # names that could not be claimed (permissions); retried when changed

    # --- control -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask `run` to return after the image in hand (safe from a signal handler or another thread)."""
        self._stop.set()
        self._wake.set()

    def note_completed(self, name: str) -> None:
        """A writer finished `name` (closed it, or renamed it into the folder)."""
        with self._lock:
            self._completed[name] = time.monotonic()
        self._wake.set()

    def run(self, *, once: bool = False) -> LiveSummary:
        """Recover what a previous run left, then classify arrivals until `stop` (or, with `once`, until idle)."""
        self.layout.create(self.cam)
        self._recover()
        observer = None if (self.poll_s or once) else self._start_observer()
        busy = False
        try:
            while not self._stop.is_set():
                ready, waiting = self._scan()
                for path in ready:
                    if self._stop.is_set():
                        break
                    self._take(path)
                if ready:
                    busy = True
                    continue
                if busy and self.on_idle is not None:
                    self.on_idle(self.summary)
                busy = False
                if once and not waiting:
                    break
                interval = min(0.1, self.settle_s / 4) if waiting else (self.poll_s or RESCAN_S)
                self._wake.wait(interval)
                self._wake.clear()
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)
        return self.summary

    # --- arrival -------------------------------------------------------------------------------------------
    def _start_observer(self) -> Any:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory:
                    return
                if event.event_type == "closed":
                    watcher.note_completed(os.path.basename(os.fsdecode(event.src_path)))
                elif event.event_type == "moved":
                    watcher.note_completed(os.path.basename(os.fsdecode(event.dest_path)))
                else:
                    watcher._wake.set()

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
            self._completed = {n: t for n, t in self._completed.items() if n in listing}
            completed = set(self._completed)
        self._seen = {n: s for n, s in self._seen.items() if n in listing}
        self._refused &= set(listing)
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
            if name in completed or now - since >= self.settle_s:
                ready.append((signature[1], name))
            else:
                waiting += 1
        return [self.in_dir / name for _, name in sorted(ready)], waiting

    def _forget(self, name: str) -> None:
        with self._lock:
            self._completed.pop(name, None)
        self._seen.pop(name, None)

    # --- claim, classify, finish ---------------------------------------------------------------------------
    def _take(self, path: Path) -> None:
        arrived = utc_now()
        self.classifier.warm()  # while the file is claimed, hashed and decoded
        self._forget(path.name)
        target = self.layout.processing / path.name  # the input's own name: a restart recovers it from there
        if target.exists():
            target = self.layout.processing / free_name(self.layout.processing, path.name)
        try:
            move_to(path, target)
        except FileNotFoundError:
            return  # taken away by its writer (or another watcher) before we claimed it
        except OSError as exc:
            log.error("%s: cannot move it out of the watched folder (%s); leaving it there", path, exc)
            self._refused.add(path.name)
            return
        self._process(target, arrived)

    def _recover(self) -> None:
        """Finish what an interrupted run left: half-done claims first, then everything in processing/."""
        for claimed in sorted(self.layout.processing.iterdir()):
            original = self.in_dir / claimed.name
            if same_file(original, claimed):
                original.unlink()
        leftovers = sorted(p for p in self.layout.processing.iterdir() if p.is_file())
        if leftovers:
            log.warning("finishing %d file(s) an interrupted run left in %s", len(leftovers), self.layout.processing)
        for claimed in leftovers:
            self._process(claimed, utc_now())

    def _process(self, claimed: Path, arrived: str) -> None:
        sha256 = file_sha256(claimed)
        result = self.layout.results / result_name(claimed.name, sha256)
        repeated = result.exists()
        if repeated:
            record = json.loads(result.read_text())
            self.summary.repeated += 1
        else:
            record = self._classify(claimed, sha256, arrived)
            write_json_atomic(result, record)
            self.summary.add(record)
        self._finish(claimed, record)
        if self.on_record is not None:
            self.on_record(record, repeated)

    def _classify(self, claimed: Path, sha256: str, arrived: str) -> dict[str, Any]:
        prediction = self.classifier.predict([claimed], cam=self.cam)[0]
        failed = prediction.error is not None
        folder = self.layout.failed if failed else self.layout.done
        name = free_name(folder, claimed.name, companions=(".reason.txt",) if failed else ())
        extra: dict[str, Any] = {"moved_to": f"{folder.name}/{name}"}
        if prediction.cam is not None and prediction.display is not None:
            ok, png = cv2.imencode(".png", overlay(prediction.display, prediction.cam))
            cam_path = self.layout.cam / f"{fit_name(claimed.name, 40)}.{sha256[:16]}.cam.png"
            if ok:
                write_atomic(cam_path, png.tobytes())
                extra["cam"] = f"cam/{cam_path.name}"
        return live_record(prediction, path=str(self.in_dir / claimed.name), sha256=sha256, arrived=arrived,
                           finished=utc_now(), model=self.classifier.path.name, **extra)

    def _finish(self, claimed: Path, record: dict[str, Any]) -> None:
        target = self.layout.out / record["moved_to"]
        failed = record["error"] is not None
        if target.exists() and not same_file(claimed, target):  # an identical input dropped again
            target = target.parent / free_name(target.parent, claimed.name,
                                               companions=(".reason.txt",) if failed else ())
        if failed:
            reason = target.with_name(target.name + ".reason.txt")
            write_atomic(reason, f"{record['path']}: {record['error']}\n".encode(errors="backslashreplace"))
        move_to(claimed, target)
