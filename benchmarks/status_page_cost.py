"""Does an open status page slow the DICOM node? Arrival-to-result latency with the page closed and open.

Usage: python benchmarks/status_page_cost.py [--data ROOT ...] [--per-phase 80] [--rate 8] [--rounds 3]
       [--out benchmarks/live]

`cxr-edge dicom-listen --cam` runs with the shipped model as a service would. One sender stores real films of
the labelled roots (wrapped as Secondary Capture instances in memory; nothing is written outside a temporary
folder) at `--rate` instances a second. Phases alternate: the status page closed; `cxr-edge status-page` running with
only its event stream read (curl); headless Chromium showing it with updates stopped; and showing it with live
updates, `--rounds` times.
The figure is the listener's own ``arrival_to_result_ms`` per phase, and the ratios within the run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import cv2
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its tests/ holds the peers
from tests.live.peers import free_port, wait_for_echo  # noqa: E402


def as_dicom(path: Path) -> Dataset:
    pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.PatientID, ds.PatientName = "OT", "CHEST", "BENCH", "Bench^Page"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    return ds


def wait_for(check, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up")


def phase(port: int, films: list[Dataset], rate: float) -> None:
    """Send `films` (each under a new SOP Instance UID) at `rate` a second over one association."""
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXREDGE")
    start = time.monotonic()
    for i, ds in enumerate(films):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        assoc.send_c_store(ds)
        time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
    assoc.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append")
    parser.add_argument("--per-phase", type=int, default=80)
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "live")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    samples = scan_dataset(resolve_data_dirs(args.data)).samples
    films = [as_dicom(s.path) for s in samples[:: max(1, len(samples) // args.per_phase)][: args.per_phase]]
    port, page_port = free_port(), free_port()
    url = f"http://127.0.0.1:{page_port}/"
    latencies: dict[str, list[float]] = {"page closed": [], "events only": [], "page open, not updating": [],
                                         "page open": []}
    with TemporaryDirectory(prefix="cxr-edge-page-") as work, sync_playwright() as playwright:
        out = Path(work) / "out"
        listener = subprocess.Popen([sys.executable, "-m", "cxr_edge.cli", "dicom-listen", "--port", str(port),
                                     "--host", "127.0.0.1", "--out", str(out), "--cam"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_echo(port, listener, ae_title="BENCH", timeout=90)
            # started once and left running, as on a workstation: its start-up is not the page's cost
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            browser.new_page().goto("about:blank")
            time.sleep(10)
            phase(port, films[:10], args.rate)  # warm-up
            for round_ in range(args.rounds):
                order = tuple(latencies) if round_ % 2 == 0 else tuple(reversed(latencies))
                for name in order:
                    server = page = reader = None
                    if name != "page closed":
                        server = subprocess.Popen([sys.executable, "-m", "cxr_edge.cli", "status-page", str(out),
                                                   "--port", str(page_port)], stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL)
                        wait_for(lambda: urllib.request.urlopen(url + "api/status", timeout=2), "the status page")
                    if name == "events only":  # the server's side alone: its event stream read, nothing drawn
                        reader = subprocess.Popen(["curl", "-sN", url + "events"], stdout=subprocess.DEVNULL)
                    if name.startswith("page open"):
                        page = browser.new_page()
                        page.goto(url)
                        page.wait_for_selector("#health.ok", timeout=30_000)
                        if name == "page open, not updating":  # Chromium itself, without the page's work
                            page.evaluate("events.close()")
                        time.sleep(3)  # the page's first load is over: what stays is the cost of having it open
                    before = {p.name for p in (out / "results").iterdir()}
                    phase(port, films, args.rate)
                    wait_for(lambda seen=len(before): len(list((out / "results").iterdir())) - seen >= len(films),
                             "the results", timeout=120)
                    for path in (out / "results").iterdir():
                        if path.name not in before:
                            latencies[name].append(json.loads(path.read_text())["arrival_to_result_ms"])
                    if page is not None:
                        page.close()
                    if reader is not None:
                        reader.terminate()
                        reader.wait(timeout=10)
                    if server is not None:
                        server.terminate()
                        server.wait(timeout=30)
                    print(name, "done", flush=True)
        finally:
            listener.send_signal(signal.SIGTERM)
            listener.wait(timeout=60)
    rows = {name: {"n": len(v), "p50_ms": statistics.median(v), "p95_ms": sorted(v)[int(0.95 * len(v))]}
            for name, v in latencies.items()}
    ratio = rows["page open"]["p50_ms"] / rows["page closed"]["p50_ms"]
    ratio_p95 = rows["page open"]["p95_ms"] / rows["page closed"]["p95_ms"]
    record = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "rate_per_s": args.rate, "rounds": args.rounds, "rows": rows,
              "ratio_p50": ratio, "ratio_p95": ratio_p95}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "status-page.json").write_text(json.dumps(record, indent=2) + "\n")
    m = record["machine"]
    lines = ["# Does an open status page slow the DICOM node?\n",
             f"{record['date']}; {m['cpu']}, {m['cores']} cores; `python benchmarks/status_page_cost.py` "
             f"({args.rounds} rounds of {args.per_phase} real films per phase at {args.rate:g}/s, phases "
             "alternating; shipped model, `--cam`)\n",
             "| phase | instances | arrival to result p50 ms | p95 ms |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {r['n']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |" for name, r in rows.items()]
    lines += ["", f"Page open / closed: {ratio:.2f}x at p50, {ratio_p95:.2f}x at p95. The page's server and "
              "Chromium run on the same 2 cores as the listener, as they would on the workstation. \"events "
              "only\" reads the page's event stream without drawing it (the server's share); \"not updating\" "
              "has the page open in Chromium with its event stream closed (the browser's own share). Chromium "
              "runs throughout, started before the first phase, as it would on a workstation.", ""]
    (args.out / "status-page.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
