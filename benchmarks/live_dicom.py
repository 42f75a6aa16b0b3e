"""Reliability and speed of `cxr-edge dicom-listen`: 200 real radiographs over loopback, four senders at once.

Usage: python benchmarks/live_dicom.py [--data DIR] [--count 200] [--model FILE] [--out benchmarks/live]

The images of the labelled data folder ($CXR_DATA) become DICOM instances in a scratch folder (never in the
repository): Computed Radiography and Digital X-Ray, uncompressed, JPEG baseline, RLE and JPEG 2000, at their own
size. The listener runs as the service would (`cxr-edge dicom-listen` in its own process, shipped model).
Three phases, each with its own UIDs:
1. paced: 4 concurrent pynetdicom associations, each delivering as an independent X-ray room would (Poisson
   arrivals, one instance per --gap seconds on average per association: 4 rooms at a pace no department
   reaches);
2. flood: the same 4 associations sending as fast as they can, which measures capacity, not latency (arrivals
   outrun 2 cores, so later instances queue);
3. dcmtk `storescu` (one process per transfer syntax, in parallel, as fast as they can), when dcmtk is installed.
For each phase it checks that every instance got Success, exactly one JSON result and one SR that references it,
and reports the listener's own arrival-to-result time (request received to result written) and the capacity.
Writes dicom.json and dicom.md into --out (`--name` picks another stem). `--sr basic` runs the listener with the
Basic Text SR instead of the coded TID 1500 report, for the ratio of their costs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.reading.images import load_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its tests/ holds the DICOM factory
from tests.factories import dicom_in_syntax  # noqa: E402
from tests.live.peers import free_port  # noqa: E402

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
SYNTAXES = [ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless, JPEG2000Lossless]
BAR_MS = 50.0


def make_instance(pixels: np.ndarray, syntax: str, index: int) -> Dataset:
    """An 8-bit radiograph as a CR or DX instance in `syntax` (the test suite's own DICOM factory)."""
    sop_class = CR if index % 2 else DX
    extra = {"PresentationIntentType": "FOR PRESENTATION"} if sop_class == DX else {}
    return dicom_in_syntax(pixels, syntax, modality="CR" if sop_class == CR else "DX", sop_class=sop_class,
                           PatientName=f"Bench^Patient{index}", PatientID=f"BENCH{index:05d}", **extra)


def build_instances(data_dirs: list[Path], count: int, folder: Path) -> list[Path]:
    from cxr_edge.runtime.evaluation.dataset import scan_dataset

    images = [s.path for s in scan_dataset(data_dirs).samples]
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        pixels = np.uint8(np.round(load_image(images[i % len(images)]) * 255))
        ds = make_instance(pixels, SYNTAXES[i % len(SYNTAXES)], i)
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def renew_uids(paths: list[Path], folder: Path) -> list[Path]:
    """The same instances with new SOP Instance UIDs (a second, independent delivery)."""
    folder.mkdir(parents=True)
    renewed = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / path.name, enforce_file_format=True)
        renewed.append(folder / path.name)
    return renewed


def send_pynetdicom(paths: list[Path], port: int, senders: int, interval: float = 0.0) -> list[int]:
    """Each sender opens one association and sends its share; returns every status.

    With `interval` 0 each sends as fast as it can (a flood). Otherwise sends are a Poisson process with that
    mean gap per sender, as independent X-ray rooms would deliver (seeded, so runs are comparable).
    """
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in paths]
    statuses: list[int] = []

    def sender(share: list[Dataset], seed: int) -> None:
        rng = np.random.default_rng(seed)
        ae = AE(ae_title="BENCHSCU")
        for sop_class in (CR, DX):
            for syntax in SYNTAXES:
                ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate("127.0.0.1", port, ae_title="CXREDGE")
        assert assoc.is_established, "association refused"
        next_send = time.perf_counter()
        for ds in share:
            if interval:
                next_send += rng.exponential(interval)
                time.sleep(max(0.0, next_send - time.perf_counter()))
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else -1)
        assoc.release()

    threads = [threading.Thread(target=sender, args=(datasets[i::senders], i)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


STORESCU_FLAGS = {ExplicitVRLittleEndian: "-x=", JPEGBaseline8Bit: "-xy", RLELossless: "-xr", JPEG2000Lossless: "-xv"}
"""storescu proposes one preferred transfer syntax per run, so each run carries the files of one syntax."""


def send_storescu(paths: list[Path], port: int, senders: int) -> list[int]:
    """One `storescu` process per transfer syntax, in parallel; exit code 0 means all its files got Success."""
    shares: dict[str, list[Path]] = {}
    for path in paths:
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        shares.setdefault(syntax, []).append(path)
    processes = [(subprocess.Popen(["storescu", "-aec", "CXREDGE", "-aet", "STORESCU", STORESCU_FLAGS[syntax],
                                    "127.0.0.1", str(port), *map(str, share)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), share)
                 for syntax, share in shares.items()]
    statuses = []
    for process, share in processes:
        _, err = process.communicate()
        statuses += [0 if process.returncode == 0 else -1] * len(share)
        if process.returncode:
            print(err, file=sys.stderr)
    return statuses


def wait_results(out: Path, uids: list[str], timeout: float = 60) -> None:
    """Until every instance is finished (result, report, moved on), or `timeout` seconds (what is missing is then
    reported)."""
    deadline = time.monotonic() + timeout
    while not all((out / "done" / f"{uid}.dcm").exists() or (out / "failed" / f"{uid}.dcm").exists()
                  for uid in uids):
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)


def check_phase(name: str, paths: list[Path], statuses: list[int], out: Path, started: float) -> dict:
    """Counts and latencies of one phase; `started` is when its first send began (perf_counter)."""
    send_seconds = time.perf_counter() - started
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    wait_results(out, uids)
    all_seconds = time.perf_counter() - started
    records = [json.loads((out / "results" / f"{uid}.json").read_text()) for uid in uids
               if (out / "results" / f"{uid}.json").exists()]
    srs_ok = 0
    for record in records:
        uid = record["sop_instance_uid"]
        if record.get("sr"):
            sr = pydicom.dcmread(out / record["sr"])
            referenced = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            srs_ok += referenced.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
    latencies = sorted(r["arrival_to_result_ms"] for r in records) or [float("nan")]
    return {
        "phase": name, "instances": len(paths), "successes": sum(s == 0 for s in statuses),
        "results": len(records), "classified": sum(r["error"] is None for r in records), "srs": srs_ok,
        "send_seconds": round(send_seconds, 2), "sent_per_second": round(len(paths) / send_seconds, 1),
        "classified_per_second": round(len(records) / all_seconds, 1),
        "arrival_to_result_ms": {"median": round(statistics.median(latencies), 1),
                                 "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
                                 "max": round(latencies[-1], 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="labelled data (default: $CXR_DATA or the shared set)")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--gap", type=float, default=1.0, help="mean seconds between sends per association, paced")
    parser.add_argument("--model", default=None, help="model file (default: the shipped INT8 model)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "live")
    parser.add_argument("--sr", choices=("tid1500", "basic"), default="tid1500", help="the listener's report kind")
    parser.add_argument("--name", default="dicom", help="stem of the record files")
    args = parser.parse_args()
    from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs

    data_dirs = resolve_data_dirs(args.data)
    phases = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        paths = build_instances(data_dirs, args.count, scratch_dir / "send")
        out, port = scratch_dir / "out", free_port()
        command = [sys.executable, "-m", "cxr_edge.cli", "dicom-listen", "--port", str(port), "--host", "127.0.0.1",
                   "--out", str(out), "--sr", args.sr] + (["--model", args.model] if args.model else [])
        listener = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or listener.poll() is not None:
                        raise SystemExit("listener did not start") from None
                    time.sleep(0.1)
            warm = renew_uids(paths[:4], scratch_dir / "warm")  # first inferences pay one-off set-up costs
            send_pynetdicom(warm, port, 1)
            check_phase("warm-up", warm, [0] * len(warm), out, time.perf_counter())
            for name, gap in ((f"paced: {args.senders} associations, Poisson, mean gap {args.gap:g} s", args.gap),
                              (f"flood: {args.senders} associations, as fast as they can", 0.0)):
                batch = renew_uids(paths, scratch_dir / f"gap{gap}")
                started = time.perf_counter()
                statuses = send_pynetdicom(batch, port, args.senders, gap)
                phases.append(check_phase(name, batch, statuses, out, started))
            if shutil.which("storescu"):
                again = renew_uids(paths, scratch_dir / "again")
                started = time.perf_counter()
                statuses = send_storescu(again, port, args.senders)
                phases.append(check_phase(f"flood: dcmtk storescu, {len(SYNTAXES)} processes", again, statuses,
                                          out, started))
            else:
                print("dcmtk's storescu is not installed: the storescu phase was not run", file=sys.stderr)
        finally:
            listener.terminate()
            _, err = listener.communicate(timeout=60)
        if listener.returncode != 0:
            raise SystemExit(f"listener exited with {listener.returncode}: {err}")

    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "model": args.model or "shipped INT8", "sr": args.sr, "phases": phases,
              "bar_ms": BAR_MS}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"DICOM listener, {args.count} instances per phase ({', '.join(s.name for s in SYNTAXES)}), "
             f"{record['model']} model, {args.sr} reports, on {record['machine']['cpu']}, "
             f"{record['machine']['cores']} cores; "
             f"{record['created']}.", "",
             "| phase | successes | results | SRs | sent/s | classified/s | arrival to result p50 | p95 | max |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in phases:
        a = p["arrival_to_result_ms"]
        lines.append(f"| {p['phase']} | {p['successes']}/{p['instances']} | {p['results']} | {p['srs']} | "
                     f"{p['sent_per_second']} | {p['classified_per_second']} | {a['median']} ms | {a['p95']} ms | "
                     f"{a['max']} ms |")
    complete = all(p["successes"] == p["results"] == p["srs"] == p["instances"] for p in phases)
    lines += ["", f"Every instance Success, one result and one SR in every phase: {'yes' if complete else 'NO'}.",
              *(f"Median arrival to result <= {BAR_MS:.0f} ms, {p['phase'].split(':')[0]}: "
                f"{'met' if p['arrival_to_result_ms']['median'] <= BAR_MS else 'NOT met'} "
                f"({p['arrival_to_result_ms']['median']} ms)." for p in phases)]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
