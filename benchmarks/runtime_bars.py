"""The edge runtime's own figures: cold start, end-to-end latency, folder throughput and memory of `predict`.

Usage: python benchmarks/runtime_bars.py [--model FILE] [--data DIR] [--out benchmarks/runtime]

- cold start: `cxr-edge predict one.png --backend ort` from process start to exit, median of 15 runs
  (graph cache warm, as on a workstation after its first start);
- end to end in one process: a 1024 px JPEG from disk to label, p50 of 200 runs after warm-up, with the stages,
  on ONNX Runtime and on OpenVINO in alternating blocks;
- folder: all images of the data folder through `predict_stream` (decoding overlapped with inference) against
  model-only throughput at the same batch size and decode-only throughput on the same pool, all in the same run;
  with decoding and inference sharing the cores, no overlap can beat the harmonic sum of the two;
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
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np


def _machine() -> dict:
    import onnxruntime

    from cxr_edge.runtime.evaluation.bench import machine_info

    return machine_info() | {"onnxruntime": onnxruntime.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: the shipped INT8 model)")
    parser.add_argument("--data", default=None, help="labelled images (default: $CXR_DATA or the shared set)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "runtime")
    args = parser.parse_args()

    from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
    from cxr_edge.runtime.model.backends import resolve_backend
    from cxr_edge.runtime.model.classifier import Classifier
    from cxr_edge.runtime.model.model_file import resolve_model
    from cxr_edge.runtime.model.preprocess import load_many, to_input
    from cxr_edge.runtime.model.stream import predict_stream
    from cxr_edge.runtime.timing import time_interleaved

    model = resolve_model(args.model)
    samples = scan_dataset(resolve_data_dirs(args.data)).samples
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

    # 2. one 1024 px JPEG end to end, in process, on each engine; the engines take turns in blocks of ten runs
    #    so that a slow moment of the machine hits both alike
    classifiers = {name: Classifier.open(model, backend=name) for name in ("ort", "openvino")}
    record["default_backend"] = resolve_backend(model)[0]  # what `predict` picks without --backend
    stages: dict[str, list[dict[str, float]]] = {name: [] for name in classifiers}

    def runner(name: str):
        return lambda image: stages[name].append(classifiers[name].predict([image])[0].latency_ms)

    runners = [runner(name) for name in classifiers]
    time_interleaved(runners, big, runs=20, block=10)  # warm-up
    for recorded in stages.values():
        recorded.clear()
    totals = dict(zip(classifiers, time_interleaved(runners, big, runs=200, block=10), strict=True))
    height, width = cv2.imread(str(big), cv2.IMREAD_GRAYSCALE).shape
    record["end_to_end_ms"] = {"image": f"{width}x{height} JPEG", "runs": len(totals["ort"])} | {
        name: {"p50": statistics.median(totals[name]), "p90": float(np.percentile(totals[name], 90)),
               "stages_p50": {k: statistics.median(r[k] for r in stages[name])
                              for k in ("decode", "preprocess", "inference")}}
        for name in classifiers}
    for name in classifiers:
        print(f"end to end on {name}: {record['end_to_end_ms'][name]['p50']:.2f} ms p50 ({width}x{height} JPEG)",
              flush=True)

    # 3. folder throughput against model-only throughput, same batch size, same run
    batch = 8
    folder_classifier = Classifier.open(model, backend="ort", mode="throughput")
    contract = folder_classifier.contract
    inputs = to_input(load_many([s.path for s in samples], contract)[0], contract)
    paths = [s.path for s in samples]
    runs: dict[str, list[float]] = {"model_only": [], "decode_only": [], "folder": []}
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(inputs), batch):
            folder_classifier.run(inputs[i:i + batch])
        runs["model_only"].append(len(inputs) / (time.perf_counter() - start))
        # decoding and preprocessing alone, on the same pool size predict_stream uses
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            decoded = list(pool.map(folder_classifier.prepare, paths))
        runs["decode_only"].append(len(decoded) / (time.perf_counter() - start))
        start = time.perf_counter()
        results = list(predict_stream(folder_classifier, paths, batch_size=batch))
        runs["folder"].append(len(results) / (time.perf_counter() - start))
    model_only, decode_only, folder = (max(runs[k]) for k in ("model_only", "decode_only", "folder"))
    # When decoding and inference share every core, each image costs the core-time of both: the best any
    # overlap can do is the harmonic sum of the two throughputs.
    ceiling = 1 / (1 / model_only + 1 / decode_only)
    record["folder"] = {"images": len(paths), "batch": batch, "model_only_ips": model_only,
                        "decode_only_ips": decode_only, "shared_core_ceiling_ips": ceiling, "folder_ips": folder,
                        "ratio": folder / model_only, "ratio_to_ceiling": folder / ceiling, "runs": runs}
    print(f"folder: {folder:.0f} images/s vs model-only {model_only:.0f} ({folder / model_only:.0%}); decode-only "
          f"{decode_only:.0f}, shared-core ceiling {ceiling:.0f} ({folder / ceiling:.0%} of it)", flush=True)

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
        *(f"| {e2e['image']} to label on {name}{' (the default)' if name == record['default_backend'] else ''}, "
          f"p50 (decode {e2e[name]['stages_p50']['decode']:.2f} + preprocess "
          f"{e2e[name]['stages_p50']['preprocess']:.2f} + inference {e2e[name]['stages_p50']['inference']:.2f} ms) "
          f"| {e2e[name]['p50']:.2f} ms | <= 10 ms |" for name in ("ort", "openvino")),
        f"| folder of {len(paths)} images vs model-only (batch {batch}) | {folder:.0f} vs {model_only:.0f} images/s "
        f"({folder / model_only:.0%}) | >= 80 % |",
        f"| the same folder against the shared-core ceiling (decode-only {decode_only:.0f} images/s on "
        f"{os.cpu_count()} threads, so at most {ceiling:.0f} images/s, {ceiling / model_only:.0%} of model-only) | "
        f"{folder / ceiling:.0%} of the ceiling | (why the bar above is out of reach here) |",
        f"| peak RSS of `predict` on the folder | {record['predict_folder_peak_rss_mb']:.0f} MB | <= 250 MB |",
    ]
    (args.out / "runtime.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
