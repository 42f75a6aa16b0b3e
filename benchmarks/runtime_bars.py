"""The edge runtime's own figures: cold start, end-to-end latency, folder throughput and memory of `predict`.

Usage: python benchmarks/runtime_bars.py [--model FILE] [--data DIR] [--out benchmarks/runtime]

- cold start: `cxr-edge predict one.png --backend ort` from process start to exit, median of 15 runs
  (graph cache warm, as on a workstation after its first start);
- end to end in one process: a 1024 px JPEG from disk to label, p50 of 200 runs after warm-up, with the stages;
- folder: all images of the data folder through `predict_stream` (decoding overlapped with inference) against
  model-only throughput at the same batch size, measured in the same run;
- peak RSS of `cxr-edge predict FOLDER` in a child process.
The images come from the labelled data folder at run time; none is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np


def _machine() -> dict:
    import onnxruntime

    from cxr_edge.runtime.bench import machine_info

    return machine_info() | {"onnxruntime": onnxruntime.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: the shipped INT8 model)")
    parser.add_argument("--data", default=None, help="labelled images (default: $CXR_DATA or the shared set)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "runtime")
    args = parser.parse_args()

    from cxr_edge.export.data import resolve_data_dir, scan_dataset
    from cxr_edge.runtime.classifier import Classifier, resolve_model
    from cxr_edge.runtime.pipeline import predict_stream
    from cxr_edge.runtime.preprocess import load_for_contract, preprocess, stack

    model = resolve_model(args.model)
    samples = scan_dataset(resolve_data_dir(args.data)).samples
    jpegs = [s.path for s in samples if s.path.suffix.lower() in (".jpg", ".jpeg")]
    big = max(jpegs, key=lambda p: cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_8).size)
    record: dict = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": _machine(),
                    "model": str(model), "threads": os.cpu_count()}
    cli = [sys.executable, "-m", "cxr_edge.cli"]

    # 0. peak RSS of predict on the whole folder, in a child process. First, while this process is still small:
    #    a child's peak includes the pages it shared with its parent between fork and exec.
    paths = [s.path for s in samples]
    folder_dir = paths[0].parent.parent
    child = subprocess.Popen([*cli, "predict", str(folder_dir), "--recursive", "--model", str(model), "--backend",
                              "ort", "--format", "jsonl"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children so far
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode not in (0, 2):
        raise SystemExit(f"predict on the folder failed with exit code {child.returncode}")
    record["predict_folder_peak_rss_mb"] = usage.ru_maxrss / 1024
    print(f"peak RSS of predict on {len(paths)} images: {record['predict_folder_peak_rss_mb']:.0f} MB", flush=True)


    # 1. cold start
    with tempfile.TemporaryDirectory() as scratch:
        one = Path(scratch) / "one.png"
        cv2.imwrite(str(one), cv2.imread(str(big), cv2.IMREAD_GRAYSCALE))
        command = [*cli, "predict", str(one), "--model", str(model), "--backend", "ort", "--format", "jsonl"]
        subprocess.run(command, check=True, capture_output=True)  # fills the graph cache
        times = []
        for _ in range(15):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    record["cold_start_s"] = {"median": statistics.median(times), "min": min(times), "max": max(times)}
    print(f"cold start: {statistics.median(times):.3f} s median", flush=True)

    # 2. one 1024 px JPEG end to end, in process
    classifier = Classifier.open(model, backend="ort")
    for _ in range(20):
        classifier.predict([big])
    totals, stages = [], {"decode": [], "preprocess": [], "inference": []}
    for _ in range(200):
        start = time.perf_counter()
        result = classifier.predict([big])[0]
        totals.append((time.perf_counter() - start) * 1000)
        for key in stages:
            stages[key].append(result.latency_ms[key])
    height, width = cv2.imread(str(big), cv2.IMREAD_GRAYSCALE).shape
    record["end_to_end_ms"] = {"image": f"{width}x{height} JPEG", "p50": statistics.median(totals),
                               "p90": float(np.percentile(totals, 90)),
                               "stages_p50": {k: statistics.median(v) for k, v in stages.items()}}
    print(f"end to end: {statistics.median(totals):.2f} ms p50 ({width}x{height} JPEG)", flush=True)

    # 3. folder throughput against model-only throughput, same batch size, same run
    batch = 8
    folder_classifier = Classifier.open(model, backend="ort", mode="throughput")
    contract = folder_classifier.contract
    inputs = stack([preprocess(load_for_contract(p, contract).pixels, contract) for p in (s.path for s in samples)])
    paths = [s.path for s in samples]
    runs: dict[str, list[float]] = {"model_only": [], "folder": []}
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(inputs), batch):
            folder_classifier.backend.run(inputs[i:i + batch])
        runs["model_only"].append(len(inputs) / (time.perf_counter() - start))
        start = time.perf_counter()
        results = list(predict_stream(folder_classifier, paths, batch_size=batch))
        runs["folder"].append(len(results) / (time.perf_counter() - start))
    model_only, folder = max(runs["model_only"]), max(runs["folder"])
    record["folder"] = {"images": len(paths), "batch": batch, "model_only_ips": model_only, "folder_ips": folder,
                        "ratio": folder / model_only, "runs": runs}
    print(f"folder: {folder:.0f} images/s vs model-only {model_only:.0f} ({folder / model_only:.0%})", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime.json").write_text(json.dumps(record, indent=2) + "\n")
    e2e = record["end_to_end_ms"]
    lines = [
        f"`python benchmarks/runtime_bars.py` on {record['machine']['cpu']} ({record['machine']['cores']} cores, "
        f"{', '.join(record['machine']['flags'])}), onnxruntime {record['machine']['onnxruntime']}, "
        f"model `{Path(record['model']).name}`; measured {record['created']}.",
        "",
        "| figure | measured | bar |",
        "| --- | --- | --- |",
        f"| cold start, `predict one.png --backend ort` (median of 15) | {record['cold_start_s']['median']:.3f} s "
        "| <= 0.8 s |",
        f"| {e2e['image']} to label, p50 (decode {e2e['stages_p50']['decode']:.2f} + preprocess "
        f"{e2e['stages_p50']['preprocess']:.2f} + inference {e2e['stages_p50']['inference']:.2f} ms) | "
        f"{e2e['p50']:.2f} ms | <= 10 ms |",
        f"| folder of {len(paths)} images vs model-only (batch {batch}) | {folder:.0f} vs {model_only:.0f} images/s "
        f"({folder / model_only:.0%}) | >= 80 % |",
        f"| peak RSS of `predict` on the folder | {record['predict_folder_peak_rss_mb']:.0f} MB | <= 250 MB |",
    ]
    (args.out / "runtime.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
