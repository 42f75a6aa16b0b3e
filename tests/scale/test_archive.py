"""score-archive on a local two-worker Ray cluster: every input exactly once, equal to single-process predict,
a corrupt file a row, and a killed driver continued by the next run without scoring anything twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.model_file import MODELS_DIR, SHIPPED_INT8, file_sha256
from cxr_edge.runtime.scale.archive import PARTS_DIR, read_results, score_archive
from tests.numerics import assert_same_results, int8_rerun_bound

CLASSES = ("normal", "covid19", "bacterial_pneumonia", "viral_pneumonia")


def _ray_stop() -> None:
    """Stop what a killed driver's local Ray instance may leave running."""
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture()
def archive(small_dataset: Path, tmp_path: Path) -> Path:
    """24 real films in a folder tree, a corrupt file and a copy of one film under another name."""
    root = tmp_path / "archive"
    shutil.copytree(small_dataset, root / "site-a")
    (root / "site-a" / "normal" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return root


def test_every_image_once_equal_to_predict_with_errors_as_rows(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = score_archive(archive, out, backend="ort", workers=2, batch_size=4, jsonl=True)
    table = read_results(out).to_pylist()
    files = sorted(str(p) for p in archive.rglob("*") if p.is_file())
    assert sorted(r["path"] for r in table) == files  # every input exactly once
    assert summary.scored == len(files) and summary.skipped == 0
    broken = next(r for r in table if r["path"].endswith("broken.jpeg"))
    assert broken["status"] == "failed" and "JPEG" in broken["error"] and broken["label"] is None
    local = {p.path: p for p in Classifier.open(MODELS_DIR / SHIPPED_INT8, backend="ort", threads=1).predict(files)}
    bound = int8_rerun_bound(MODELS_DIR / SHIPPED_INT8)  # another process and batch size: not bit-equal everywhere
    for row in table:
        here = local[row["path"]]
        assert row["status"] == here.status and row["model_sha256"] == file_sha256(MODELS_DIR / SHIPPED_INT8)
        if row["error"] is None:
            assert row["sha256"] == file_sha256(row["path"])
            there = replace(here, label=row["label"], probabilities={n: row[f"p_{n}"] for n in CLASSES})
            assert_same_results([there], [here], bound)
    assert len((out / "results.jsonl").read_text().splitlines()) == len(files)

    shutil.copy(files[0] if not files[0].endswith("broken.jpeg") else files[1], archive / "copy.png")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,site\n" + "".join(f"{f},a\n" for f in files) + f"{archive / 'copy.png'},a\n")
    again = score_archive(manifest, out, workers=2, batch_size=4)
    assert again.scored == 0 and again.skipped == len(files) + 1  # known files by stamp, the copy by content
    assert len(read_results(out)) == len(files)


def test_a_killed_driver_is_continued_by_the_next_run_and_nothing_is_scored_twice(data_dir: Path,
                                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cxr_edge.cli", "score-archive", str(data_dir), "--out", str(out),
               "--batch-size", "2", "--workers", "2"]
    total = sum(1 for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".jpeg", ".jpg"))
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(list((out / PARTS_DIR).glob("part-*.parquet"))) < 3:
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "no results within 3 minutes"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        _ray_stop()
    written = len(read_results(out))
    assert 0 < written < total, (written, total)  # really interrupted
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode in (0, 2), second.stderr
    rows = read_results(out).to_pylist()
    counts = Counter(r["path"] for r in rows)
    assert len(counts) >= total - 1 and max(counts.values()) == 1, counts.most_common(3)  # all there, none twice
    assert f"{written} already scored" in second.stderr, second.stderr
