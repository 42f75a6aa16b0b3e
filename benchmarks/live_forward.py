"""Forwarding to a PACS that is down for a minute: does every report arrive, once, and how long after it is back?

Usage: python benchmarks/live_forward.py [--images 60] [--down 60] [--out benchmarks/live]

`cxr-edge dicom-listen --forward` runs as a service would (its own process, the shipped model, --sc); a
pynetdicom SCP plays the PACS. For the first `--down` seconds nothing listens on the PACS port while images keep
arriving (one a second from one sender); the listener is killed with SIGKILL halfway through the outage and
restarted. Then the PACS comes up and the record says how long the outbox took to empty, how many objects the
PACS received, and how many of them were repeats (same SOP Instance UID twice).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.outputs.outbox import MAX_BACKOFF_S

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its tests/ holds the peers
from tests.live.peers import free_port, wait_for_echo  # noqa: E402


def radiograph(seed: int) -> Dataset:
    """A synthetic 16-bit CR (no patient data): what matters here is the path of its report, not its label."""
    rng = np.random.default_rng(seed)
    pixels = (np.linspace(200, 3800, 512)[None, :] + rng.normal(0, 60, (512, 512))).clip(0, 4095).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.PatientID, ds.PatientName = "CR", "CHEST", "BENCH", "Bench^Forward"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 512, 512, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    return ds


def pending(out: Path) -> list[Path]:
    return [p for p in (out / "outbox").glob("*/pending/*") if not p.name.startswith(".")]


def start_listener(port: int, out: Path, pacs_port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cxr_edge.cli", "dicom-listen", "--port", str(port), "--host",
                             "127.0.0.1", "--out", str(out), "--sc", "--forward", f"PACS@127.0.0.1:{pacs_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def store(port: int, ds: Dataset) -> bool:
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXREDGE")
    if not assoc.is_established:
        return False
    status = assoc.send_c_store(ds)
    assoc.release()
    return bool(status) and status.Status == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--down", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "live")
    args = parser.parse_args()
    port, pacs_port = free_port(), free_port()
    received: list[str] = []
    with TemporaryDirectory(prefix="cxr-edge-forward-") as work:
        out = Path(work) / "out"
        listener = start_listener(port, out, pacs_port)
        wait_for_echo(port, listener, ae_title="BENCH")
        started = time.monotonic()
        accepted, killed = 0, False
        interval = args.down / args.images
        for i in range(args.images):
            if not killed and time.monotonic() - started > args.down / 2:
                listener.send_signal(signal.SIGKILL)  # mid-outage, reports waiting in the outbox
                listener.wait()
                listener = start_listener(port, out, pacs_port)
                wait_for_echo(port, listener, ae_title="BENCH")
                killed = True
            accepted += store(port, radiograph(i))
            time.sleep(max(0.0, started + (i + 1) * interval - time.monotonic()))
        time.sleep(max(0.0, started + args.down - time.monotonic()))
        pending_at_up = len(pending(out))
        ae = AE(ae_title="PACS")
        for sop_class in ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"):
            ae.add_supported_context(sop_class, ExplicitVRLittleEndian)
        pacs_up = time.monotonic()
        server = ae.start_server(("127.0.0.1", pacs_port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, lambda event: received.append(str(event.request.AffectedSOPInstanceUID)) or 0)])
        while pending(out) and time.monotonic() - pacs_up < 300:
            time.sleep(0.1)
        drained_s = time.monotonic() - pacs_up
        server.shutdown()
        listener.send_signal(signal.SIGTERM)
        listener.wait(timeout=60)
        made = sorted(p.name for p in (out / "sr").iterdir()) + sorted(p.name for p in (out / "sc").iterdir())
        results = len(list((out / "results").iterdir()))
    counts = Counter(received)
    record = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "images_sent": args.images, "accepted": accepted, "results": results,
              "objects_made": len(made), "pacs_down_s": args.down, "listener_killed_mid_outage": killed,
              "pending_when_pacs_came_up": pending_at_up, "drained_s": round(drained_s, 1),
              "received": len(received), "distinct_received": len(counts),
              "repeats": sum(n - 1 for n in counts.values())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "forward.json").write_text(json.dumps(record, indent=2) + "\n")
    m = record["machine"]
    lines = ["# Forwarding through a PACS outage\n",
             f"{record['date']}; {m['cpu']}, {m['cores']} cores; cxr-edge {record['versions'].get('cxr-edge')}; "
             f"`python benchmarks/live_forward.py --images {args.images} --down {args.down:g}`\n",
             "| images sent | accepted | results | reports + heatmaps made | PACS down | listener kill -9 | "
             "waiting when the PACS came up | outbox empty after | received by the PACS | distinct | repeats |",
             "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
             f"| {args.images} | {accepted} | {results} | {len(made)} | {args.down:g} s | "
             f"{'yes, mid-outage' if killed else 'no'} | {pending_at_up} | {drained_s:.1f} s | {len(received)} | "
             f"{len(counts)} | {record['repeats']} |", "",
             "The outbox empties at the sender's next attempt after the PACS is back: attempts back off from 1 s "
             f"doubling to {MAX_BACKOFF_S:g} s, so after a long outage the wait is at most {MAX_BACKOFF_S:g} s, "
             "then the backlog goes in one association. A repeat would be an object sent again after a crash "
             "between the PACS's Success and its removal from the outbox; it carries the same SOP Instance UID.", ""]
    (args.out / "forward.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
