"""The first inference after idle, in the live modes: how much slower than a warm one, and what waking helps.

Usage: python benchmarks/warm.py [--idle 2.0] [--trials 25] [--out benchmarks/live]

An image reaches `watch` or `dicom-listen` after seconds of nothing. Per engine (the shipped INT8 ONNX model on
ONNX Runtime, the INT8 IR on OpenVINO; latency mode, as the live modes open them):
- warm: back-to-back inferences, the median;
- cold: after `--idle` seconds of sleep, one inference, the median over `--trials`;
- woken: the same, but `Classifier.warm` is called when the image "arrives" and the inference follows a real
  decode of a chest film (the work that hides the throw-away inference), as in the live modes;
- the same three with another process keeping one core busy (p90 too: waking must not hurt under load).
Ratios to the warm median are the figures; absolute times drift with the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.model_file import MODELS_DIR, SHIPPED_INT8, SHIPPED_OPENVINO


def _burn(stop: multiprocessing.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def measure(classifier: Classifier, film: Path, idle: float, trials: int) -> dict:
    prepared = classifier.prepare(film)
    batch = prepared.input[None]
    for _ in range(50):
        classifier.run(batch)
    warm = []
    for _ in range(200):
        start = time.perf_counter()
        classifier.run(batch)
        warm.append((time.perf_counter() - start) * 1000)
    cold, woken = [], []
    for _ in range(trials):
        time.sleep(idle)
        start = time.perf_counter()
        classifier.run(batch)
        cold.append((time.perf_counter() - start) * 1000)
        time.sleep(idle)
        waking = classifier.warm()
        classifier.prepare(film)  # the decode the throw-away inference hides behind
        if waking is not None:
            waking.join()
        start = time.perf_counter()
        classifier.run(batch)
        woken.append((time.perf_counter() - start) * 1000)
    p50 = statistics.median(warm)
    return {"warm_p50_ms": p50, "cold_p50_ms": statistics.median(cold), "woken_p50_ms": statistics.median(woken),
            "cold_ratio": statistics.median(cold) / p50, "woken_ratio": statistics.median(woken) / p50,
            "warm_p90_ms": float(np.percentile(warm, 90)), "woken_p90_ms": float(np.percentile(woken, 90)),
            "cold_p90_ms": float(np.percentile(cold, 90))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--idle", type=float, default=2.0)
    parser.add_argument("--trials", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "live")
    args = parser.parse_args()
    film = next(s.path for s in scan_dataset(resolve_data_dirs(args.data)).samples if s.path.suffix == ".jpeg")
    rows = {}
    for engine, model in (("ort", MODELS_DIR / SHIPPED_INT8), ("openvino", MODELS_DIR / SHIPPED_OPENVINO)):
        classifier = Classifier.open(model, backend=engine, mode="latency")
        rows[f"{engine}, quiet"] = measure(classifier, film, args.idle, args.trials)
        stop = multiprocessing.Event()
        burner = multiprocessing.Process(target=_burn, args=(stop,), daemon=True)
        burner.start()
        try:
            rows[f"{engine}, one core busy"] = measure(classifier, film, args.idle, args.trials)
        finally:
            stop.set()
            burner.join()
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "idle_s": args.idle, "trials": args.trials, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "warm.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# The first inference after idle", "", f"Measured {record['created']} on {record['machine']['cpu']} "
             f"({', '.join(record['machine']['flags'])}); `python benchmarks/warm.py`: shipped INT8 models, latency "
             f"mode, {args.trials} inferences after {args.idle:g} s of idle each.", "",
             "| engine, machine | warm p50 ms | after idle p50 ms (x warm) | woken p50 ms (x warm) | warm p90 | "
             "woken p90 |", "| --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['warm_p50_ms']:.2f} | {row['cold_p50_ms']:.2f} ({row['cold_ratio']:.2f}x) | "
                     f"{row['woken_p50_ms']:.2f} ({row['woken_ratio']:.2f}x) | {row['warm_p90_ms']:.2f} | "
                     f"{row['woken_p90_ms']:.2f} |")
    (args.out / "warm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
