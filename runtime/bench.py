"""`cxr-edge bench`: every backend and precision side by side, against the one-minute budget per image.

Method, so that the figures survive an engineer's check:
- every row is opened in the same process; load and first-inference times come from a fresh child process per
  row (with its peak resident memory), so that caches of one row do not flatter another's start;
- warm-up runs, then many timed batch-1 runs, the rows interleaved in short blocks (A B C D A B C D ...): drift
  of the machine hits every row alike; blocks of a few runs let each engine's threads settle;
- thread count pinned and reported; CPU model, the instruction-set flags that matter and library versions in
  the header; a warning when the machine is loaded or a row's spread is wide.
PyTorch eager FP32 (the seed project's way) is a reference row only when torch is installed and a checkpoint is
given; it is imported lazily, so the edge install never needs it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .classifier import SHIPPED_MODELS, Classifier, resolve_model
from .contract import Contract
from .cpu import INT8_FLAGS, cpu_flags, cpu_model
from .errors import CxrEdgeError
from .metrics import classification_report
from .model_info import QUANTIZATION_KEY, model_size_mb
from .outputs import BUDGET_S, budget_verdict
from .preprocess import load_many, to_input
from .timing import time_interleaved

__all__ = ["BenchRow", "default_rows", "run_bench", "machine_info", "versions",
           "SHIPPED_OPENVINO"]

SHIPPED_OPENVINO = "cxr-edge-int8-openvino.xml"
BLOCK = 5
"""Timed runs per row before moving to the next row."""


@dataclass
class BenchRow:
    """One (backend, precision, model) combination and its measurements."""

    backend: str
    precision: str
    model: str
    figures: dict = field(default_factory=dict)
    run: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "model": self.model} | self.figures


def machine_info() -> dict:
    """CPU model, the instruction-set flags that decide INT8 speed, cores and load."""
    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "flags": [name for flag, name in INT8_FLAGS.items() if flag in flags],
            "platform": platform.platform(),
            "python": platform.python_version()}


def versions() -> dict:
    found = {}
    for name in ("cxr-edge", "onnxruntime", "openvino", "numpy", "opencv-python-headless", "torch"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def default_rows(models: Sequence[Path], backends: Sequence[str], precisions: Sequence[str],
                 open_model: Callable[[Path, str], Classifier] | None = None) -> list[tuple]:
    """(backend, precision, path) for each model on each engine that should run it.

    ONNX files run on both engines, except INT8 ONNX on OpenVINO when an OpenVINO INT8 model is also given (the
    NNCF model is OpenVINO's INT8 row); IR runs on OpenVINO only.

    Args:
        open_model: (path, backend) -> Classifier, so that a caller can reuse the models opened here.
    """
    open_model = open_model or (lambda path, backend: Classifier.open(path, backend=backend))
    described = []
    for path in models:
        metadata = open_model(path, "ort" if path.suffix == ".onnx" else "openvino").metadata
        described.append((path, "int8" if QUANTIZATION_KEY in metadata else "fp32"))
    has_ov_int8 = any(p.suffix == ".xml" and prec == "int8" for p, prec in described)
    rows = []
    for path, precision in described:
        engines = ["openvino"] if path.suffix == ".xml" else ["ort", "openvino"]
        if path.suffix == ".onnx" and precision == "int8" and has_ov_int8:
            engines = ["ort"]
        rows += [(b, precision, path) for b in engines if b in backends and precision in precisions]
    return rows


def shipped_models() -> list[Path]:
    """The shipped FP32 ONNX, INT8 ONNX and INT8 OpenVINO IR files that exist."""
    folder = resolve_model(None).parent
    return [folder / name for name in (SHIPPED_MODELS[1], SHIPPED_MODELS[0], SHIPPED_OPENVINO)
            if (folder / name).exists()]


_CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from cxr_edge.runtime.classifier import Classifier
import numpy as np
c = Classifier.open(sys.argv[1], backend=sys.argv[2], threads=int(sys.argv[3]))
loaded = time.perf_counter()
c.backend.run(np.zeros((1, c.contract.channels, *c.contract.input_size), np.float32))
first = time.perf_counter()
def peak_mb():
    # VmHWM belongs to this program's own address space; ru_maxrss would also count the parent's pages that
    # were shared between fork and exec, and the parent holds every other row.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"load_s": loaded - start, "first_ms": (first - loaded) * 1000, "peak_rss_mb": peak_mb()}))
"""


def _cold_figures(path: Path, backend: str, threads: int) -> dict:
    """Load time, first inference and peak RSS of one row, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), backend, str(threads)], capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        raise CxrEdgeError(f"{path}: cannot run on {backend}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _torch_row(checkpoint: Path, contract: Contract, threads: int) -> BenchRow | None:
    """The PyTorch reference row, or None where torch is not installed (the edge install)."""
    if importlib.util.find_spec("torch") is None:
        return None
    reference = importlib.import_module("cxr_edge.export.reference")  # build side; imports torch
    row = BenchRow("torch", "fp32", str(checkpoint), run=reference.torch_runner(checkpoint, contract, threads))
    row.figures["size_mb"] = checkpoint.stat().st_size / 2**20
    return row


def _labelled_inputs(data_dir: Path, contract: Contract) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Preprocessed inputs and labels (indices into the model's classes) of a class-folder dataset.

    Folders are read as training reads them (aliases such as ``COVID-19``, a ``train`` subfolder); classes the
    model does not have are refused rather than silently dropped, since accuracy over a subset misleads.
    """
    from .dataset import CLASS_NAMES, scan_dataset

    dataset = scan_dataset(data_dir)
    present = sorted({CLASS_NAMES[s.label] for s in dataset.samples}, key=CLASS_NAMES.index)
    foreign = [name for name in present if name not in contract.class_names]
    if foreign:
        raise CxrEdgeError(f"{data_dir}: the model has no class {', '.join(foreign)} "
                           f"(its classes: {', '.join(contract.class_names)})")
    images, kept, errors = load_many([s.path for s in dataset.samples], contract)
    if not kept:
        raise CxrEdgeError(f"{data_dir}: none of the {len(dataset.samples)} labelled images could be read")
    labels = [contract.class_names.index(CLASS_NAMES[dataset.samples[i].label]) for i in kept]
    return to_input(images, contract), np.asarray(labels), [str(e) for e in errors]


def run_bench(models: Sequence[Path] = (), *, checkpoint: Path | None = None, data_dir: Path | None = None,
              backends: Sequence[str] = ("ort", "openvino", "torch"), precisions: Sequence[str] = ("fp32", "int8"),
              batches: Sequence[int] = (1, 8, 32), threads: int | None = None, runs: int = 100, warmup: int = 10,
              end_to_end: Sequence[Path] = (), on_progress: Callable[[str], None] | None = None) -> dict:
    """Benchmark models on every requested engine and precision; returns the JSON-ready result.

    Args:
        models: model files (default: the shipped FP32 ONNX, INT8 ONNX and INT8 OpenVINO IR).
        checkpoint: training checkpoint for the PyTorch reference row.
        data_dir: labelled class-folder images for accuracy, macro-F1 and agreement with FP32.
        backends, precisions: which rows to run.
        batches: batch sizes for throughput.
        threads: inference threads (default: every core), the same for every row.
        runs, warmup: timed and untimed batch-1 runs per row.
        end_to_end: image files to time through decode, preprocess, inference and post-processing.
        on_progress: called with a short description as work advances.
    """
    progress = on_progress or (lambda _: None)
    load_before = os.getloadavg()[0]  # before this benchmark loads the machine itself
    threads = threads or os.cpu_count() or 1
    models = [Path(m) for m in models] or shipped_models()
    if not models:
        raise CxrEdgeError("no model to benchmark: pass --model FILE (this installation ships none)")
    opened: dict[tuple[Path, str], Classifier] = {}

    def open_model(path: Path, backend: str) -> Classifier:  # each model opens once per engine
        if (path, backend) not in opened:
            opened[path, backend] = Classifier.open(path, backend=backend, threads=threads)
        return opened[path, backend]

    specs = default_rows(models, backends, precisions, open_model)
    rows: list[BenchRow] = []
    contract = None
    for backend, precision, path in specs:
        progress(f"opening {path.name} on {backend}")
        classifier = open_model(path, backend)
        if contract is None:
            contract = classifier.contract
        elif classifier.contract != contract:
            raise CxrEdgeError(f"{path} carries a different preprocessing contract from {specs[0][2]}; "
                               "bench compares one model in its variants, not different models")
        row = BenchRow(backend, precision, str(path), run=lambda b, c=classifier: c.backend.run(b)[0])
        row.figures["size_mb"] = model_size_mb(path)
        row.figures |= _cold_figures(path, backend, threads)
        rows.append(row)
    if checkpoint is not None and "torch" in backends and contract is not None:
        reference = _torch_row(Path(checkpoint), contract, threads)
        if reference is not None:
            rows.append(reference)
    if not rows:
        raise CxrEdgeError("no (backend, precision) pair to run; check --backends and --precisions")

    one = np.zeros((1, contract.channels, *contract.input_size), np.float32)
    rng = np.random.default_rng(0)
    one[:] = rng.normal(size=one.shape)
    for row in rows:
        for _ in range(warmup):
            row.run(one)
    progress(f"timing {runs} batch-1 runs per row, interleaved")
    samples = time_interleaved([row.run for row in rows], one, runs, block=BLOCK)
    for i, row in enumerate(rows):
        times = np.asarray(samples[i])
        row.figures["latency_ms"] = {"p50": float(np.median(times)), "p90": float(np.percentile(times, 90)),
                                     "p99": float(np.percentile(times, 99)), "min": float(times.min()),
                                     "max": float(times.max())}
        row.figures["raw_latency_ms"] = times.round(4).tolist()

    for batch_size in batches:
        progress(f"throughput at batch {batch_size}")
        batch = np.repeat(one, batch_size, axis=0)
        repeats = max(3, 64 // batch_size)
        best: dict[int, float] = {}
        for _ in range(2):  # two interleaved passes; the better one counts (the other absorbs warm-up)
            for i, row in enumerate(rows):
                row.run(batch)
                start = time.perf_counter()
                for _ in range(repeats):
                    row.run(batch)
                best[i] = max(best.get(i, 0.0), batch_size * repeats / (time.perf_counter() - start))
        for i, row in enumerate(rows):
            row.figures.setdefault("throughput_ips", {})[str(batch_size)] = best[i]

    _ratios(rows)
    unreadable: list[str] = []
    if data_dir is not None:
        progress("accuracy on the labelled folder")
        unreadable = _accuracy(rows, Path(data_dir), contract)
    warnings = _warnings(rows, load_before)
    if unreadable:
        warnings.append(f"{len(unreadable)} labelled images could not be read and are not in the accuracy figures "
                        f"(listed under 'unreadable'); the first: {unreadable[0]}")
    result = {"machine": machine_info() | {"load_average_1m_before": load_before}, "versions": versions(),
              "threads": threads, "runs": runs, "warmup": warmup, "batches": list(batches), "budget_s": BUDGET_S,
              "contract": contract.to_dict(), "rows": [row.as_dict() for row in rows],
              "warnings": warnings, "unreadable": unreadable}
    if end_to_end:
        progress("end to end on real files")
        result["end_to_end"] = _end_to_end(specs, end_to_end, open_model)
    return result


def _ratios(rows: list[BenchRow]) -> None:
    fp32 = {r.backend: r.figures["latency_ms"]["p50"] for r in rows if r.precision == "fp32"}
    reference = next((r for r in rows if r.backend == "torch"), None)
    for row in rows:
        p50 = row.figures["latency_ms"]["p50"]
        row.figures["speedup_vs_fp32"] = fp32[row.backend] / p50 if row.backend in fp32 else None
        row.figures["speedup_vs_reference"] = (reference.figures["latency_ms"]["p50"] / p50) if reference else None
        row.figures["budget_headroom"] = budget_verdict(p50)
        row.figures["budget_ratio"] = BUDGET_S * 1000 / p50


def _accuracy(rows: list[BenchRow], data_dir: Path, contract: Contract) -> list[str]:
    """Accuracy, macro-F1 and agreement with FP32 for every row; returns the files that could not be read."""
    inputs, labels, unreadable = _labelled_inputs(data_dir, contract)
    predicted = {}
    for i, row in enumerate(rows):
        probabilities = np.concatenate([row.run(inputs[j:j + 16]) for j in range(0, len(inputs), 16)])
        predicted[i] = probabilities.argmax(axis=1)
        report = classification_report(labels, predicted[i], contract.class_names)
        row.figures |= {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "images": len(labels)}
    fp32_rows = {r.backend: i for i, r in enumerate(rows) if r.precision == "fp32"}
    for i, row in enumerate(rows):
        reference = fp32_rows.get(row.backend)
        row.figures["agreement_fp32"] = (float(np.mean(predicted[i] == predicted[reference]))
                                         if reference is not None else None)
    return unreadable


def _warnings(rows: list[BenchRow], load: float) -> list[str]:
    found = []
    if load > 0.5 * (os.cpu_count() or 1):
        found.append(f"the machine was loaded (1-minute load average {load:.1f} on {os.cpu_count()} cores): "
                     "figures may be pessimistic")
    for row in rows:
        latency = row.figures["latency_ms"]
        if latency["max"] > 3 * latency["min"]:
            found.append(f"{row.backend} {row.precision}: wide spread (min {latency['min']:.2f} ms, max "
                         f"{latency['max']:.2f} ms)")
    return found


def _end_to_end(specs: list[tuple], files: Sequence[Path],
                open_model: Callable[[Path, str], Classifier]) -> list[dict]:
    """Real files through the whole path, per row: where the time goes."""
    results = []
    for backend, precision, path in specs:
        classifier = open_model(path, backend)
        classifier.predict(list(files[:3]))
        stages = {"decode": [], "preprocess": [], "inference": [], "postprocess": []}
        for file in files:
            start = time.perf_counter()
            prediction = classifier.predict([file])[0]
            total = (time.perf_counter() - start) * 1000
            if prediction.error is not None:
                continue
            for key in ("decode", "preprocess", "inference"):
                stages[key].append(prediction.latency_ms[key])
            stages["postprocess"].append(max(0.0, total - sum(prediction.latency_ms[k] for k in
                                                              ("decode", "preprocess", "inference"))))
        medians = {k: statistics.median(v) if v else 0.0 for k, v in stages.items()}
        total = sum(medians.values())
        results.append({"backend": backend, "precision": precision, "model": str(path), "files": len(stages["decode"]),
                        "stage_ms_p50": medians, "total_ms": total,
                        "share": {k: (v / total if total else 0.0) for k, v in medians.items()}})
    return results
