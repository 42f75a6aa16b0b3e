"""Private by default: whatever the umask, no output of any mode is readable by others; `--group` opens them to
one group only, and an output folder that others can already enter is reported at start."""

from __future__ import annotations

import grp
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_edge.runtime.files import share_with
from cxr_edge.runtime.live.dicom_listener import DicomListener
from cxr_edge.runtime.live.watch import FolderWatcher
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.outputs.outbox import Outbox, parse_destination
from cxr_edge.runtime.outputs.steps import OutputOptions
from tests.factories import dicom_dataset, gradient, tiny_onnx, write_dicom
from tests.live.peers import free_port
from tests.live.test_results_in_pacs import send


@pytest.fixture()
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)
        share_with(None)


def _modes(root: Path) -> dict[str, int]:
    """Every folder and file under `root` (itself included) with its permission bits."""
    found = {str(root): stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _closed_to(root: Path, bits: int) -> None:
    modes = _modes(root)
    assert len(modes) > 5
    assert {name: oct(mode) for name, mode in modes.items() if mode & bits} == {}


@pytest.fixture()
def classifier(tmp_path: Path) -> Classifier:
    return Classifier.open(tiny_onnx(tmp_path / "tiny.onnx", size=64), backend="ort")


def test_watch_writes_nothing_others_can_read(tmp_path: Path, classifier: Classifier, umask_022: None) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    film = write_dicom(inbox / "chest.dcm", gradient(256, 256))
    os.chmod(film, 0o644)  # as a console's export leaves it
    options = OutputOptions(cam=True, sc=True, sr="tid1500", fhir=out / "fhir", keep_phi=True)
    FolderWatcher(inbox, out, classifier, outputs=options, settle_s=0.05).run(once=True)
    outbox = Outbox(out, [parse_destination(f"PACS@127.0.0.1:{free_port()}")])  # queued, never sent here
    outbox.put(next((out / "sr").glob("*.sr.dcm")))
    assert {p.parent.name for p in out.rglob("*.dcm")} >= {"done", "sr", "sc", "pending"}
    _closed_to(out, 0o077)


def test_the_dicom_node_writes_nothing_others_can_read(tmp_path: Path, classifier: Classifier,
                                                       umask_022: None) -> None:
    out = tmp_path / "out"
    node = DicomListener(out, classifier, port=0, host="127.0.0.1",
                         outputs=OutputOptions(sr="tid1500", sc=True, fhir=out / "fhir", keep_phi=True))
    node.start()
    try:
        send(node.port, dicom_dataset(gradient(256, 256)))
        assert node.wait_idle()
    finally:
        node.stop()
    assert {p.parent.name for p in out.rglob("*.dcm")} >= {"done", "sr", "sc"}
    assert (out / "status.json").exists()
    _closed_to(out, 0o077)


def test_predict_and_a_group(tmp_path: Path, umask_022: None) -> None:
    model = tiny_onnx(tmp_path / "tiny.onnx", size=64)
    film = write_dicom(tmp_path / "chest.dcm", gradient(256, 256))
    group = grp.getgrgid(os.getgid()).gr_name
    outputs = tmp_path / "outputs"
    for extra, closed in (([], 0o077), (["--group", group], 0o027)):
        folder = outputs / ("group" if extra else "owner")
        run = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "predict", str(film), "--model", str(model),
                              "--format", "jsonl", "--cam-dir", str(folder / "cam"), "--sr", str(folder / "sr"),
                              "--fhir", str(folder / "fhir"), *extra], capture_output=True, text=True, timeout=120,
                             preexec_fn=lambda: os.umask(0o022))
        assert run.returncode == 0, run.stderr
        record = json.loads(run.stdout)
        assert record["sr"] and record["fhir"] and record["cam"]
        _closed_to(folder, closed)
        if extra:
            assert {stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()} == {0o640}
            assert all(p.stat().st_gid == os.getgid() for p in folder.rglob("*"))
    refused = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "predict", str(film), "--model", str(model),
                              "--group", "no-such-group-here"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "--group no-such-group-here: no such group" in refused.stderr


def test_an_output_folder_open_to_others_is_reported_at_start(tmp_path: Path, classifier: Classifier,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    out.mkdir(mode=0o755)
    os.chmod(out, 0o755)
    with caplog.at_level(logging.WARNING):
        FolderWatcher(inbox, out, classifier, settle_s=0.05).run(once=True)
    assert any("is open to others (mode 755)" in r.getMessage() for r in caplog.records)
