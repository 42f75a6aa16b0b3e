"""The watched folder on a real filesystem: real inotify, real subprocesses, real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_edge.runtime.files import TEMP_PREFIX
from cxr_edge.runtime.live.watch import FolderWatcher, result_name
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.model_file import file_sha256
from cxr_edge.runtime.outputs.steps import OutputOptions
from tests.factories import gradient, truncated, write_dicom

RECORD_KEYS = {"path", "label", "finding", "finding_probability", "probabilities", "latency_ms", "error", "status",
               "monitor", "gate", "sha256", "arrived", "finished", "warnings", "model", "moved_to"}


def png_bytes(seed: int) -> bytes:
    image = np.roll(gradient(120, 100), seed * 7, axis=1)
    return cv2.imencode(".png", image)[1].tobytes()


def results(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Running:
    """A FolderWatcher in a thread of this process; stopped (and joined) on exit."""

    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher
        self.thread = threading.Thread(target=watcher.run)

    def __enter__(self) -> FolderWatcher:
        self.thread.start()
        assert self.watcher.ready.wait(20)
        return self.watcher

    def __exit__(self, *exc: object) -> None:
        self.watcher.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()


def test_arrivals_get_one_result_each_and_move_on(tmp_path: Path, model: Path) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    (inbox / "before.png").write_bytes(png_bytes(0))  # present at start
    classifier = Classifier.open(model, backend="ort")
    seen: list[dict] = []
    watcher = FolderWatcher(inbox, out, classifier, settle_s=0.3, on_record=lambda r, repeated: seen.append(r))
    with Running(watcher):
        (inbox / "plain.png").write_bytes(png_bytes(1))  # closed by its writer
        (inbox / "renamed.png.part").write_bytes(png_bytes(2))
        (inbox / ".hidden.png").write_bytes(png_bytes(3))
        time.sleep(0.8)
        assert (inbox / "renamed.png.part").exists() and (inbox / ".hidden.png").exists()  # never touched
        os.rename(inbox / "renamed.png.part", inbox / "renamed.png")
        write_dicom(inbox / "image.dcm", gradient(128, 128))
        (inbox / "notes.png").write_text("not an image")
        (truncated(tmp_path, ".jpg")).rename(inbox / "cut.jpg")
        wait_for(lambda: len(seen) == 6, timeout=40)
    assert sorted(p.name for p in inbox.iterdir()) == [".hidden.png"]
    assert sorted(p.name for p in (out / "done").iterdir()) == ["before.png", "image.dcm", "plain.png", "renamed.png"]
    assert sorted(p.name for p in (out / "failed").iterdir()) == [
        "cut.jpg", "cut.jpg.reason.txt", "notes.png", "notes.png.reason.txt"]
    assert "truncated" in (out / "failed" / "cut.jpg.reason.txt").read_text()
    assert not list((out / "processing").iterdir())
    records = results(out)
    assert len(records) == 6
    for name, record in records.items():
        assert set(record) == RECORD_KEYS
        moved = out / record["moved_to"]
        assert file_sha256(moved) == record["sha256"] and name == result_name(moved.name, record["sha256"])
        assert record["path"] == str(inbox.absolute() / moved.name)
        assert record["arrived"] <= record["finished"]
        if record["error"] is None:
            assert record["label"] in record["probabilities"] and abs(sum(record["probabilities"].values()) - 1) < 1e-4
    assert watcher.summary.classified == 4 and watcher.summary.failed == 2


def test_a_file_is_not_taken_while_it_is_still_being_written(tmp_path: Path, model: Path) -> None:
    """A slow writer that keeps the file open: only the completed file is classified (polling, no inotify)."""
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    data = png_bytes(4)
    seen: list[dict] = []
    watcher = FolderWatcher(inbox, out, Classifier.open(model, backend="ort"), settle_s=0.5, poll_s=0.05,
                            on_record=lambda r, repeated: seen.append(r))
    assert watcher.mode == "polling"
    with Running(watcher):
        with open(inbox / "slow.png", "wb") as handle:
            for start in range(0, len(data), len(data) // 5 + 1):
                handle.write(data[start:start + len(data) // 5 + 1])
                handle.flush()
                time.sleep(0.2)  # shorter than the settle time
        wait_for(lambda: len(seen) == 1)
    assert seen[0]["error"] is None and seen[0]["sha256"] == file_sha256(out / "done" / "slow.png")


def test_falls_back_to_polling_without_inotify(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """inotify can be exhausted (max_user_instances) or absent (network filesystems): the watcher lists instead."""
    import watchdog.observers

    class Exhausted(watchdog.observers.Observer):
        def start(self) -> None:
            raise OSError(24, "inotify instance limit reached")

    monkeypatch.setattr(watchdog.observers, "Observer", Exhausted)
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    seen: list[dict] = []
    watcher = FolderWatcher(inbox, out, Classifier.open(model, backend="ort"), settle_s=0.2,
                            on_record=lambda r, rep: seen.append(r))
    with Running(watcher):
        (inbox / "a.png").write_bytes(png_bytes(3))
        wait_for(lambda: len(seen) == 1)
        assert watcher.mode == "polling"
    assert (out / "done" / "a.png").exists()


def test_names_are_never_overwritten_and_repeats_get_no_second_result(tmp_path: Path, model: Path) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    classifier = Classifier.open(model, backend="ort")
    repeats: list[bool] = []
    for content in (png_bytes(5), png_bytes(6), png_bytes(5)):  # same name: new, different, identical again
        (inbox / "x.png").write_bytes(content)
        FolderWatcher(inbox, out, classifier, settle_s=0.05, on_record=lambda r, rep: repeats.append(rep)).run(
            once=True)
    assert repeats == [False, False, True]
    assert sorted(p.name for p in (out / "done").iterdir()) == ["x (2).png", "x (3).png", "x.png"]
    assert len(results(out)) == 2


def test_heatmaps_with_cam(tmp_path: Path, model: Path) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes(2))
    FolderWatcher(inbox, out, Classifier.open(model, backend="ort"), outputs=OutputOptions(cam=True),
                  settle_s=0.05).run(once=True)
    (record,) = results(out).values()
    overlay = cv2.imread(str(out / record["cam"]))
    assert record["cam"].startswith("cam/a.png.") and overlay.shape[0] > 120 and overlay.shape[1] > 100  # + caption


def test_hostile_names(tmp_path: Path, model: Path) -> None:
    """Names at the filesystem's length limit, with a newline, or not UTF-8 at all: each still gets its result."""
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    names = ["line\nbreak.png", "é" * 125 + ".png", os.fsdecode(b"latin1-\xe9.png"), "[bold]markup[red].png"]
    for i, name in enumerate(names):
        (inbox / name).write_bytes(png_bytes(i) if i % 2 == 0 else b"broken")
    lines: list[str] = []
    FolderWatcher(inbox, out, Classifier.open(model, backend="ort"), settle_s=0.05,
                  on_record=lambda r, rep: lines.append(r["path"])).run(once=True)
    assert len(lines) == 4 and not list(inbox.iterdir())
    assert len(results(out)) == 4
    assert len(list((out / "done").iterdir())) == 2
    assert len(list((out / "failed").glob("*.reason.txt"))) == 2


def test_restart_finishes_every_interrupted_step(tmp_path: Path, model: Path) -> None:
    """The states a kill -9 can leave, built by hand, each finished once by the next start."""
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    classifier = Classifier.open(model, backend="ort")
    FolderWatcher(inbox, out, classifier).run(once=True)  # creates the layout
    # 1. claimed (in processing/), nothing else done yet
    (out / "processing" / "claimed.png").write_bytes(png_bytes(7))
    # 2. claim interrupted between link and unlink: one file under both names
    (out / "processing" / "linked.png").write_bytes(png_bytes(8))
    os.link(out / "processing" / "linked.png", inbox / "linked.png")
    # 3. result written, input not yet moved on
    (out / "processing" / "finished.png").write_bytes(png_bytes(9))
    sha = file_sha256(out / "processing" / "finished.png")
    earlier = {"path": str(inbox / "finished.png"), "label": "normal", "probabilities": {}, "latency_ms": {},
               "error": None, "sha256": sha, "moved_to": "done/finished.png"}
    (out / "results" / result_name("finished.png", sha)).write_text(json.dumps(earlier))
    # 4. failure recorded, reason and move not yet done
    (out / "processing" / "broken.png").write_bytes(b"garbage")
    sha_broken = file_sha256(out / "processing" / "broken.png")
    (out / "results" / result_name("broken.png", sha_broken)).write_text(json.dumps(
        earlier | {"label": None, "error": "not an image", "sha256": sha_broken, "moved_to": "failed/broken.png",
                   "path": str(inbox / "broken.png")}))
    # 5. half-written temporary files
    (out / "results" / f"{TEMP_PREFIX}123-x.json").write_text("{")
    (out / "done" / f"{TEMP_PREFIX}123-y.png").write_bytes(b"")

    repeated: list[str] = []
    watcher = FolderWatcher(inbox, out, classifier, on_record=lambda r, rep: repeated.append(r["path"]) if rep else 0)
    watcher.run(once=True)
    assert sorted(p.name for p in (out / "done").iterdir()) == ["claimed.png", "finished.png", "linked.png"]
    assert sorted(p.name for p in (out / "failed").iterdir()) == ["broken.png", "broken.png.reason.txt"]
    assert not list(inbox.iterdir()) and not list((out / "processing").iterdir())
    assert len(results(out)) == 4
    assert json.loads((out / "results" / result_name("finished.png", sha)).read_text()) == earlier  # untouched
    assert sorted(Path(p).name for p in repeated) == ["broken.png", "finished.png"]
    assert not list(out.rglob(f"{TEMP_PREFIX}*"))


def _start(inbox: Path, out: Path, model: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cxr_edge.cli", "watch", str(inbox), "--out", str(out),
                             "--model", str(model), "--backend", "ort", "--settle", "0.2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_in_the_middle_loses_nothing(tmp_path: Path, model: Path) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    names = [f"img{i:03d}.png" for i in range(80)]
    for i, name in enumerate(names):
        (inbox / name).write_bytes(png_bytes(i) if i % 10 else b"\x89PNG broken")
    process = _start(inbox, out, model)
    wait_for(lambda: (out / "results").is_dir() and len(list((out / "results").iterdir())) >= 10, timeout=60)
    process.kill()
    process.wait()
    assert len(results(out)) < len(names)  # really interrupted
    process = _start(inbox, out, model, "--once")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    records = results(out)
    assert sorted(Path(r["path"]).name for r in records.values()) == names  # exactly one result each
    assert sorted(p.name for p in (out / "done").iterdir()) == [n for i, n in enumerate(names) if i % 10]
    failed = sorted(p.name for p in (out / "failed").iterdir())
    assert failed == sorted([n for i, n in enumerate(names) if not i % 10]
                            + [f"{n}.reason.txt" for i, n in enumerate(names) if not i % 10])
    assert not list(inbox.iterdir()) and not list((out / "processing").iterdir())


def test_sigterm_stops_gracefully(tmp_path: Path, model: Path) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    process = _start(inbox, out, model)
    wait_for(lambda: (out / "processing").is_dir(), timeout=60)
    (inbox / "a.png").write_bytes(png_bytes(1))
    wait_for(lambda: (out / "done" / "a.png").exists())
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    line = next(line for line in stdout.splitlines() if "a.png" in line)
    assert any(f" {name} " in line for name in ("normal", "covid19", "bacterial_pneumonia", "viral_pneumonia"))
    assert line.split("  (")[0].endswith(" ms")  # then the record's warnings (this test model has no gate)
    assert "stopped: 1 classified, 0 failed" in stderr and "Traceback" not in stderr


def test_output_folder_may_not_be_the_watched_folder(tmp_path: Path, model: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "watch", str(tmp_path), "--out", str(tmp_path),
                             "--model", str(model)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"cxr-edge: error: {tmp_path}: the output folder must not be the watched folder"]


# --- writers that pause, and output folders that refuse -------------------------------------------------------


def _write_with_pause(path: Path, data: bytes, pause_s: float) -> None:
    """Half the file, a pause longer than the settle time with the handle open (a stalled transfer), the rest."""
    half = len(data) // 2
    with open(path, "wb") as handle:
        handle.write(data[:half])
        handle.flush()
        time.sleep(pause_s)
        handle.write(data[half:])


@pytest.mark.parametrize("poll", [None, 0.05], ids=["inotify", "polling"])
def test_a_writer_that_pauses_longer_than_settle_still_gets_its_whole_image_classified(
        tmp_path: Path, model: Path, poll: float | None) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    data = png_bytes(11)
    seen: list[dict] = []
    watcher = FolderWatcher(inbox, out, Classifier.open(model, backend="ort"), settle_s=0.2, poll_s=poll,
                            on_record=lambda r, rep: seen.append(r))
    with Running(watcher):
        _write_with_pause(inbox / "slow.png", data, pause_s=1.0)
        full = file_sha256(inbox / "slow.png") if (inbox / "slow.png").exists() else None
        wait_for(lambda: any(r["error"] is None for r in seen))
    whole = [r for r in seen if r["error"] is None]
    assert len(whole) == 1 and whole[0]["sha256"] == (full or whole[0]["sha256"])
    assert (out / "done" / "slow.png").read_bytes() == data  # the complete image, never lost
    assert not (out / "failed" / "slow.png").exists() and not list((out / "failed").glob("*.reason.txt"))
    for half in (r for r in seen if r["error"] is not None):  # a half taken by the settle rule is replaced
        assert whole[0]["replaces"] == result_name("slow.png", half["sha256"])
    if poll is None:
        assert len(seen) == 1  # with inotify an open file is never taken


class Mounted:
    """A small tmpfs as the output folder, so that it can really be made read-only or full."""

    def __init__(self, path: Path, size: str = "4m") -> None:
        self.path, self.size = path, size

    def __enter__(self) -> Mounted:
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"this test needs to mount a tmpfs (root with CAP_SYS_ADMIN): {done.stderr.strip()}")
        return self

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_an_output_folder_that_refuses_makes_the_watcher_wait_not_exit(tmp_path: Path, model: Path,
                                                                       caplog: pytest.LogCaptureFixture,
                                                                       fault: str) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    seen: list[dict] = []
    with Mounted(tmp_path / "out") as mounted:
        out = mounted.path
        watcher = FolderWatcher(inbox, out, Classifier.open(model, backend="ort"), settle_s=0.1,
                                on_record=lambda r, rep: seen.append(r))
        running = Running(watcher)
        with running, caplog.at_level("WARNING"):
            (inbox / "first.png").write_bytes(png_bytes(1))
            wait_for(lambda: len(seen) == 1)
            if fault == "read-only":
                mounted.remount("ro")
            else:
                filler = out / "filler.bin"
                with open(filler, "wb") as handle:  # fill the disk to the last byte
                    with pytest.raises(OSError):
                        while True:
                            handle.write(b"\0" * 65536)
                            handle.flush()
            (inbox / "second.png").write_bytes(png_bytes(2))
            wait_for(lambda: watcher.blocked is not None)
            time.sleep(1.5)  # several attempts, all refused
            assert running.thread.is_alive() and len(seen) == 1
            assert (inbox / "second.png").exists() or (out / "processing" / "second.png").exists()
            if fault == "read-only":
                mounted.remount("rw")
            else:
                filler.unlink()
            wait_for(lambda: len(seen) == 2, timeout=40)
            assert watcher.blocked is None
        assert sorted(p.name for p in (out / "done").iterdir()) == ["first.png", "second.png"]
        assert not list(inbox.iterdir()) and not list(out.rglob(f"{TEMP_PREFIX}*"))
        assert len(results(out)) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot write to" in m for m in messages) == 1  # said once, not at every attempt
    assert any("can be written again" in m for m in messages)


def test_watch_keeps_running_when_its_output_is_read_only_at_start(tmp_path: Path, model: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes(3))
    with Mounted(tmp_path / "out") as mounted:
        mounted.remount("ro")
        process = _start(inbox, mounted.path, model)
        time.sleep(4)
        assert process.poll() is None  # waiting, not exited
        mounted.remount("rw")
        wait_for(lambda: (mounted.path / "done" / "a.png").exists(), timeout=40)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "cannot write to" in stderr and "Read-only file system" in stderr and "Traceback" not in stderr
