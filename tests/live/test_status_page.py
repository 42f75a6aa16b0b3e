"""The status page in a real headless browser (Debian's chromium driven by playwright) beside a running `watch`,
and its reading of the output folder: health, failures, no patient identifiers, nothing outside the folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_edge.runtime.live.status_page import ResultIndex, create_app, snapshot
from tests.factories import PATIENT_ID, PATIENT_NAME, dicom_dataset, gradient, tiny_onnx
from tests.live.peers import free_port

SCREENSHOTS = os.environ.get("CXR_EDGE_SCREENSHOTS")
"""A folder to save the page's screenshots in (the README's pictures); unset, none are kept."""


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium not found: make test installs Debian's chromium (playwright cannot download one here)"
    return path


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cxr_edge.cli", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until_served(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the status page did not come up"
            time.sleep(0.1)


def film(path: Path, seed: int) -> Path:
    pixels = gradient(320, 280).astype(np.float32)
    pixels = pixels / pixels.max() * 200 + np.random.default_rng(seed).normal(0, 8, pixels.shape)
    cv2.imwrite(str(path.with_suffix(".tmp.png")), np.clip(pixels, 0, 255).astype(np.uint8))
    os.replace(path.with_suffix(".tmp.png"), path)  # arrives whole, as a console's rename would
    return path


def test_a_technician_sees_results_arrive_opens_a_heatmap_and_reads_a_failure(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    model = tiny_onnx(tmp_path / "tiny.onnx", size=64)
    inbox, out, port = tmp_path / "in", tmp_path / "out", free_port()
    inbox.mkdir()
    watch = start(["watch", str(inbox), "--out", str(out), "--model", str(model), "--backend", "ort", "--cam",
                   "--settle", "0.1"])
    page_server = None
    try:
        deadline = time.monotonic() + 60
        while not (out / "status.json").exists():
            assert watch.poll() is None and time.monotonic() < deadline, watch.stderr.read()
            time.sleep(0.05)
        page_server = start(["status-page", str(out), "--port", str(port)])
        url = f"http://127.0.0.1:{port}/"
        wait_until_served(url + "api/status", page_server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 760}, bypass_csp=True)  # probes use eval
            page.goto(url)
            page.wait_for_selector("#health.ok", timeout=15_000)
            assert "watch running" in page.inner_text("#health")
            page.evaluate("window.notReloaded = true")

            film(inbox / "film-1.png", 1)
            row = page.wait_for_selector("tr.result[data-name='film-1.png']", timeout=20_000)
            assert page.evaluate("window.notReloaded === true")  # it came by the event stream, not a reload
            cells = row.inner_text()
            assert "classified" in cells or "uncertain" in cells or "rejected" in cells
            assert " ms" in cells and " %" in cells

            row.query_selector("img.thumb").click()
            page.wait_for_function("document.getElementById('viewer').open && "
                                   "document.getElementById('viewer-img').naturalWidth > 0", timeout=10_000)
            width = page.evaluate("document.getElementById('viewer-img').naturalWidth")
            assert width == cv2.imread(str(next((out / "cam").glob("film-1.png.*.cam.png")))).shape[1]
            if SCREENSHOTS:
                page.screenshot(path=str(Path(SCREENSHOTS) / "status-page-heatmap.png"))
            page.click("#viewer button")

            (inbox / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
            dicom_dataset(gradient(256, 256)).save_as(inbox / "cr.dcm", enforce_file_format=True)
            film(inbox / "film-2.png", 2)
            failure = page.wait_for_selector("tr.failure[data-name='broken.jpeg']", timeout=20_000)
            assert "JPEG" in failure.inner_text()
            page.wait_for_selector("tr.result[data-name='cr.dcm']", timeout=20_000)
            page.wait_for_selector("tr.result[data-name='film-2.png']", timeout=20_000)
            assert page.evaluate("window.notReloaded === true")
            shown = page.inner_text("body")
            assert PATIENT_NAME not in shown and PATIENT_ID not in shown and "Doe" not in shown
            assert "this hour\n4" in page.inner_text("#counts").replace("\t", "\n")
            if SCREENSHOTS:
                page.screenshot(path=str(Path(SCREENSHOTS) / "status-page.png"), full_page=True)

            watch.send_signal(signal.SIGTERM)  # the watcher stops: the page says so by itself
            watch.wait(timeout=30)
            page.wait_for_selector("#health.bad", timeout=15_000)
            assert "stopped" in page.inner_text("#health")
            browser.close()
    finally:
        for process in (watch, page_server):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


def _record(out: Path, name: str, **fields) -> None:
    (out / "results").mkdir(parents=True, exist_ok=True)
    record = {"path": f"/in/{name}", "label": "normal", "probabilities": {"normal": 0.9, "covid19": 0.1},
              "latency_ms": {"total": 5.0}, "error": None, "status": "classified", "warnings": [],
              "finished": datetime.now(UTC).isoformat(timespec="milliseconds")} | fields
    (out / "results" / f"{name}.json").write_text(json.dumps(record))


def test_the_page_never_shows_patients_and_knows_a_dead_live_mode(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _record(out, "a.dcm", sop_instance_uid="1.2.3", patient={"name": PATIENT_NAME, "id": PATIENT_ID})
    _record(out, "b.png", label=None, status="failed", error="corrupt PNG: CRC error", probabilities=None,
            finished=(datetime.now(UTC) - timedelta(hours=3)).isoformat())
    (out / "quarantine").mkdir()
    (out / "quarantine" / "20261130-000001.reason.txt").write_text("SOP Instance UID 9.9 from X: no pixel data\n")
    stale = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    (out / "status.json").write_text(json.dumps({"mode": "dicom-listen", "state": "running", "updated": stale,
                                                 "queue": 0}))
    state = snapshot(out, ResultIndex(out))
    text = json.dumps(state)
    assert PATIENT_NAME not in text and PATIENT_ID not in text
    assert [r["name"] for r in state["latest"]] == ["1.2.3", "b.png"]  # a DICOM input by its UID
    assert not state["health"]["running"] and "not responding" in state["health"]["state"]
    assert {f["name"] for f in state["failures"]} == {"b.png", "20261130-000001"}
    assert state["per_hour"][-1] == 1 and state["per_hour"][-4] == 1 and state["total"] == 2


def test_only_heatmaps_inside_the_folder_are_served(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    out = tmp_path / "out"
    (out / "cam").mkdir(parents=True)
    ok, png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    (out / "cam" / "x.cam.png").write_bytes(png.tobytes())
    (tmp_path / "secret.png").write_bytes(png.tobytes())
    client = TestClient(create_app(out))
    assert client.get("/cam/x.cam.png").status_code == 200
    thumb = client.get("/thumb/x.cam.png")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR).shape[0] == 96
    for route in ("cam", "thumb"):
        for name in ("..%2Fsecret.png", "%2E%2E%2F..%2Fsecret.png", ".hidden.png", "x.cam.png.json"):
            assert client.get(f"/{route}/{name}").status_code == 404


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        run = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "status-page", str(tmp_path), "--port",
                              str(taken.getsockname()[1])], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and len(run.stderr.strip().splitlines()) == 1 and "cannot serve" in run.stderr


def test_a_file_is_not_an_output_folder(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{}")
    run = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "status-page", str(tmp_path / "results.json")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "is a file" in run.stderr


def test_before_any_live_mode_ran_the_page_says_so(tmp_path: Path) -> None:
    state = snapshot(tmp_path / "not-yet", ResultIndex(tmp_path / "not-yet"))
    assert state["health"] == {"running": False, "state": "no live mode has written here yet"}
    assert state["latest"] == [] and state["total"] == 0


def test_the_served_page_holds_the_latest_rows_and_their_thumbnails(tmp_path: Path) -> None:
    """Before any script runs: each result's finding (with its class where that says more), its probability, and
    its heatmap thumbnail; a rejected row shows no probability and no finding."""
    from starlette.testclient import TestClient

    out = tmp_path / "out"
    (out / "cam").mkdir(parents=True)
    ok, png = cv2.imencode(".png", np.zeros((40, 30, 3), np.uint8))
    (out / "cam" / "a.png.1234.cam.png").write_bytes(png.tobytes())
    _record(out, "a.png", label="bacterial_pneumonia", finding="pneumonia", finding_probability=0.91,
            probabilities={"normal": 0.09, "bacterial_pneumonia": 0.6, "viral_pneumonia": 0.31},
            cam="cam/a.png.1234.cam.png")
    _record(out, "cat.png", label=None, status="rejected", finding=None, finding_probability=None,
            probabilities={"normal": 0.02, "covid19": 0.9, "bacterial_pneumonia": 0.05, "viral_pneumonia": 0.03},
            warnings=["rejected: unlike the chest radiographs the model was trained on"])
    served = TestClient(create_app(out)).get("/").text
    film = served[served.index('data-name="a.png"'):]
    film = film[:film.index("</tr>")]
    assert "pneumonia (bacterial_pneumonia)" in film and "91.0 %" in film
    assert '<img class="thumb" src="thumb/a.png.1234.cam.png"' in film
    cat = served[served.index('data-name="cat.png"'):]
    cat = cat[:cat.index("</tr>")]
    assert "<td>-</td>" in cat and "90" not in cat and 'class="rejected"' in cat


def test_the_login_the_headers_and_confined_paths(tmp_path: Path) -> None:
    import base64

    from starlette.testclient import TestClient

    from cxr_edge.runtime.live.login import Login, make_token
    from cxr_edge.runtime.outputs.trail import AuditTrail, read_trail

    out = tmp_path / "out"
    _record(out, "a.png")
    secret = tmp_path / "page.token"
    token = make_token(secret)
    assert token not in secret.read_text() and oct(secret.stat().st_mode & 0o777) == "0o600"
    trail = AuditTrail(tmp_path / "audit")
    client = TestClient(create_app(out, login=Login(secret), https=True, trail=trail),
                        client=("10.1.2.3", 5000))
    refused = client.get("/")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    basic = base64.b64encode(f"anyone:{token}".encode()).decode()
    page = client.get("/", headers={"Authorization": f"Basic {basic}"})
    assert page.status_code == 200 and "a.png" in page.text
    assert client.get("/api/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    for name, value in (("x-frame-options", "DENY"), ("x-content-type-options", "nosniff"),
                        ("referrer-policy", "no-referrer"), ("strict-transport-security", "max-age=31536000")):
        assert page.headers[name] == value
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    allowed = {"Authorization": f"Bearer {token}"}
    for path in ("/../secret.png", "/cam/../../secret.png", "/%2e%2e/%2e%2e/etc/passwd", "/results/a.png.json"):
        assert client.get(path, headers=allowed).status_code == 404, path
    events = [e["event"] for e in read_trail(tmp_path / "audit")]
    # a request without credentials is the browser's first knock, not a failed login; the rest were remembered
    assert events.count("login-refused") == 1 and events.count("login-accepted") == 1
    assert all(e["peer"] == "10.1.2.3" for e in read_trail(tmp_path / "audit"))


def test_the_page_refuses_the_network_without_https_and_a_login(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "status-page", str(tmp_path), "--host", "0.0.0.0",
                          "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 2, run.stderr  # the start line, the error
    assert "without --tls-cert/--tls-key and --login" in run.stderr and "--insecure" in run.stderr


def test_the_page_over_https_with_its_certificate_and_login(tmp_path: Path) -> None:
    import base64
    import ssl
    import urllib.error
    import urllib.request

    from cxr_edge.runtime.live.login import make_token
    from tests.certificates import Authority

    ca = Authority(tmp_path / "pki")
    site = ca.issue("workstation")
    token = make_token(tmp_path / "page.token")
    out, port = tmp_path / "out", free_port()
    _record(out, "a.png")
    server = start(["status-page", str(out), "--host", "0.0.0.0", "--port", str(port), "--tls-cert", str(site.cert),
                    "--tls-key", str(site.key), "--login", str(tmp_path / "page.token")])
    try:
        context = ssl.create_default_context(cafile=str(ca.cert))
        url = f"https://127.0.0.1:{port}/api/status"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, context=context, timeout=5)
            except urllib.error.HTTPError as exc:
                assert exc.code == 401  # served, over TLS, and asking for the login
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.2)
        request = urllib.request.Request(url, headers={
            "Authorization": "Basic " + base64.b64encode(f"tech:{token}".encode()).decode()})
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            assert answer.status == 200 and json.loads(answer.read())["latest"][0]["name"] == "a.png"
        with pytest.raises(urllib.error.URLError):  # a client that does not trust the site's CA gets nothing
            urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=10)
    finally:
        server.terminate()
        server.wait(timeout=30)
