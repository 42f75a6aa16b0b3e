"""`cxr-edge bench`: every backend and precision side by side, against the one-minute budget per image.

Method, so that the figures survive an engineer's check:
- every row is opened in the same process; load and first-inference times come from a fresh child process per
  row (`cxr_edge.runtime.evaluation.cold_start`, with its peak resident memory), so that caches of one row do
  not flatter another's start;
- warm-up runs, then many timed batch-1 runs, the rows interleaved in short blocks (A B C D A B C D ...): drift
  of the machine hits every row alike; blocks of a few runs let each engine's threads settle;
- thread count pinned and reported; CPU model, the instruction-set flags that matter and library versions in
  the header; a warning when the machine is loaded or a row's spread is wide;
- each row is set up on its own: a row that cannot run (a missing engine, a model it cannot load) becomes a row
  with its reason, and the others are measured as usual.
A reference row (PyTorch eager FP32, the seed project's way) is measured only when the caller supplies one
(`Reference`): the runtime never imports the build side.
"""

from __future__ import annotations

import importlib.metadata
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
from typing import Any

import numpy as np

from ..cpu import INT8_FLAGS, cpu_flags, cpu_model
from ..errors import CxrEdgeError, first_line
from ..model.classifier import Classifier
from ..model.contract import Contract
from ..model.model_file import (
    ENGINES,
    PROBABILITIES,
    QUANTIZATION_KEY,
    engines_for,
    local_engines,
    model_format,
    model_size_mb,
    reader_engine,
    shipped_models,
)
from ..model.preprocess import load_many, to_input
from ..outputs.table import BUDGET_S, budget_verdict
from ..timing import time_interleaved
from .dataset import Sample, scan_dataset
from .metrics import classification_report, finding_report, group_hits

__all__ = ["BenchRow", "Reference", "default_rows", "run_bench", "machine_info", "versions", "end_to_end_files",
           "row_label", "END_TO_END_FILES"]

THROUGHPUT_PASSES = 5
"""Timed passes per (row, batch size) for throughput; the median counts."""
BLOCK = 5
"""Timed runs per row before moving to the next row."""
END_TO_END_FILES = 200
"""Real files timed end to end at most (enough for a stable median; a whole archive would only take longer)."""

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Reference:
    """A row measured beside the engines, supplied by the caller: the build side's PyTorch eager model.

    Args:
        backend: the row's name (``torch``).
        label: its name for people.
        model: the file it runs (a training checkpoint).
        make_runner: (contract of the engine rows, threads) -> preprocessed batch -> probabilities. Raises if the
            reference cannot run here (the row then shows the reason).
    """

    backend: str
    label: str
    model: Path
    make_runner: Callable[[Contract, int], Runner]


@dataclass
class BenchRow:
    """One (backend, precision, model) combination and its measurements, or the reason it could not run."""

    backend: str
    precision: str
    model: str
    figures: dict = field(default_factory=dict)
    run: Runner | None = field(default=None, repr=False)
    error: str | None = None

    def as_dict(self) -> dict:
        row = {"backend": self.backend, "precision": self.precision, "model": self.model} | self.figures
        return row | ({"error": self.error} if self.error is not None else {})


def row_label(backend: str) -> str:
    """An engine's name for people (a reference row's label comes from its `Reference`)."""
    return ENGINES[backend].label if backend in ENGINES else backend


def machine_info() -> dict:
    """CPU model, the instruction-set flags that decide INT8 speed (those usable here), cores and load."""
    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "flags": [name for flag, name in INT8_FLAGS.items() if flag in flags],
            "platform": platform.platform(),
            "python": platform.python_version()}


def versions() -> dict:
    found = {}
    packages = ("cxr-edge", *(e.distribution for e in ENGINES.values()), "numpy", "opencv-python-headless", "torch")
    for name in dict.fromkeys(packages):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def default_rows(models: Sequence[Path], backends: Sequence[str], precisions: Sequence[str],
                 precision_of: Callable[[Path], str]) -> tuple[list[tuple[str, str, Path]], list[tuple[Path, str]]]:
    """(backend, precision, path) for each model on each engine that should run it, and the models that cannot
    be read at all, with the reason.

    A model runs on every engine of ``ENGINES`` that reads its format, except an INT8 model on an engine for which
    an INT8 model in that engine's own format is also given: that one is the engine's INT8 row (OpenVINO runs
    the NNCF IR, not the ONNX Runtime QDQ file).

    Args:
        precision_of: path -> ``fp32`` or ``int8``.
    """
    described, unreadable = [], []
    for path in models:
        try:
            described.append((path, model_format(path), precision_of(path)))
        except CxrEdgeError as exc:
            unreadable.append((path, str(exc)))
    native_int8 = {fmt for _, fmt, precision in described if precision == "int8"}
    rows = []
    for path, fmt, precision in described:
        for engine in engines_for(fmt, remote=True):
            if precision == "int8" and engine.writes in native_int8 and engine.writes != fmt:
                continue
            if engine.remote and (precision != "int8" or fmt != "onnx"):
                continue  # a server holds one model: the INT8 ONNX, as `export-repository` places it
            if engine.name in backends and precision in precisions:
                rows.append((engine.name, precision, path))
    return rows, unreadable


def _cold_figures(path: Path, backend: str, threads: int) -> dict:
    """Load time, first inference and peak RSS of one row, in a fresh process."""
    command = [sys.executable, "-m", "cxr_edge.runtime.evaluation.cold_start", str(path), backend, str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise CxrEdgeError(f"cold start failed: {last[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def end_to_end_files(data_dirs: Path | Sequence[Path], limit: int = END_TO_END_FILES) -> list[Path]:
    """Up to `limit` labelled files of data folders, spread over their classes, for end-to-end timing."""
    samples = scan_dataset(data_dirs).samples
    step = max(1, len(samples) // limit)
    return [s.path for s in samples[::step][:limit]]


def _labelled_inputs(data_dir: Path | Sequence[Path],
                     contract: Contract) -> tuple[np.ndarray, list[str], list[Sample]]:
    """Preprocessed inputs of a class-folder dataset, the files that could not be read, and the samples read.

    Folders are read as training reads them (the model's class names, aliases such as ``COVID-19``, coarse labels
    such as ``pneumonia``, a ``train`` subfolder); a folder naming no class of the model is refused rather than
    silently dropped, since accuracy over a subset misleads.
    """
    dataset = scan_dataset(data_dir, contract.class_names)
    images, kept, errors = load_many([s.path for s in dataset.samples], contract)
    if not kept:
        raise CxrEdgeError(f"{data_dir}: none of the {len(dataset.samples)} labelled images could be read")
    return to_input(images, contract), [str(e) for e in errors], [dataset.samples[i] for i in kept]


def label_figures(samples: Sequence[Sample], probabilities: np.ndarray, contract: Contract) -> dict[str, Any]:
    """Accuracy (a coarse label is right when the top class is one it allows), macro-F1 over the images with one
    class, accuracy per label-source-age cell, per age group, per source and per view, and the findings, each with
    intervals over patients."""
    names = contract.class_names
    top = probabilities.argmax(axis=1)
    called = [names[i] for i in top]
    hits = [c in s.classes for c, s in zip(called, samples, strict=True)]
    patients = [s.group for s in samples]
    exact = [i for i, s in enumerate(samples) if not s.coarse]
    report = classification_report([names.index(samples[i].label) for i in exact], top[exact], names)
    found = [contract.finding(dict(zip(names, row, strict=True)))[0] for row in probabilities]
    groups = {"by_cell": [s.cell for s in samples], "by_age": [s.age for s in samples],
              "by_source": [s.source for s in samples], "by_view": [f"{s.age}/{s.view}" for s in samples]}
    return {"accuracy": float(np.mean(hits)), "macro_f1": report["macro_f1"], "images": len(samples),
            **{key: group_hits(hits, called, keys, names, patients) for key, keys in groups.items()},
            "findings": finding_report([contract.finding_of(s.classes[0]) for s in samples], found,
                                       contract.finding_names, patients)}


def run_bench(models: Sequence[Path] = (), *, reference: Reference | None = None,
              data_dir: Path | Sequence[Path] | None = None,
              backends: Sequence[str] = (*local_engines(), "torch"), precisions: Sequence[str] = ("fp32", "int8"),
              batches: Sequence[int] = (1, 8, 32), threads: int | None = None, runs: int = 100, warmup: int = 10,
              end_to_end: Sequence[Path] = (), on_progress: Callable[[str], None] | None = None,
              **remote: Any) -> dict:
    """Benchmark models on every requested engine and precision; returns the JSON-ready result.

    Args:
        models: model files (default: the shipped FP32 ONNX, INT8 ONNX and INT8 OpenVINO IR).
        reference: a row to measure beside the engines (the PyTorch checkpoint), if its name is in `backends`.
        data_dir: labelled class-folder images (one root or several) for accuracy, macro-F1, accuracy per
            class-source-age cell and agreement with FP32.
        backends, precisions: which rows to run.
        batches: batch sizes for throughput.
        threads: inference threads (default: every core), the same for every row.
        runs, warmup: timed and untimed batch-1 runs per row.
        end_to_end: image files to time through decode, preprocess, inference and post-processing.
        on_progress: called with a short description as work advances.
        remote: an inference server for the remote engine's rows (``kserve`` in `backends`): ``server``,
            ``model_name``, ``token_file``, ``server_ca``; the INT8 models run there too, and each such row reports
            its network and serialisation cost per image over the same model run here.
    """
    progress = on_progress or (lambda _: None)
    load_before = os.getloadavg()[0]  # before this benchmark loads the machine itself
    threads = threads or os.cpu_count() or 1
    models = [Path(m) for m in models] or shipped_models()
    if not models:
        raise CxrEdgeError("no model to benchmark: pass --model FILE (this installation ships none)")
    opener = _Opener(threads, remote)
    rows, contract = _engine_rows(models, backends, precisions, opener, threads, progress)
    if reference is not None and reference.backend in backends:
        rows.append(_reference_row(reference, contract, threads))
    one = np.zeros((1, contract.channels, *contract.input_size), np.float32)
    one[:] = np.random.default_rng(0).normal(size=one.shape)
    live = _warm_up(rows, one, warmup)
    progress(f"timing {runs} batch-1 runs per row, interleaved")
    _latency(live, one, runs)
    progress(f"throughput at batch {', '.join(map(str, batches))}, interleaved")
    _throughput(live, one, batches)
    _ratios(live, reference.backend if reference is not None else None)
    unreadable: list[str] = []
    if data_dir is not None:
        progress("accuracy on the labelled folder")
        unreadable = _accuracy(live, data_dir, contract)
    warnings = _warnings(rows, load_before)
    if unreadable:
        warnings.append(f"{len(unreadable)} labelled images could not be read and are not in the accuracy figures "
                        f"(listed under 'unreadable'); the first: {unreadable[0]}")
    labels = {row.backend: row_label(row.backend) for row in rows}
    if reference is not None:
        labels[reference.backend] = reference.label
    result = {"machine": machine_info() | {"load_average_1m_before": load_before}, "versions": versions(),
              "threads": threads, "runs": runs, "warmup": warmup, "batches": list(batches), "budget_s": BUDGET_S,
              "contract": contract.to_dict(), "labels": labels, "rows": [row.as_dict() for row in rows],
              "warnings": warnings, "unreadable": unreadable}
    if end_to_end:
        progress("end to end on real files")
        engine_rows = [(r.backend, r.precision, Path(r.model)) for r in live if r.backend in ENGINES]
        result["end_to_end"] = _end_to_end(engine_rows, end_to_end, opener.open)
    return result


class _Opener:
    """Opens each model once per engine, with the benchmark's threads and server."""

    def __init__(self, threads: int, remote: dict[str, Any]) -> None:
        self.threads, self.remote = threads, remote
        self.opened: dict[tuple[Path, str], Classifier] = {}

    def open(self, path: Path, backend: str) -> Classifier:
        if (path, backend) not in self.opened:
            self.opened[path, backend] = Classifier.open(path, backend=backend, threads=self.threads, **self.remote)
        return self.opened[path, backend]

    def precision_of(self, path: Path) -> str:
        metadata = self.open(path, reader_engine(model_format(path)).name).metadata
        return "int8" if QUANTIZATION_KEY in metadata else "fp32"


def _engine_rows(models: Sequence[Path], backends: Sequence[str], precisions: Sequence[str], opener: _Opener,
                 threads: int, progress: Callable[[str], None]) -> tuple[list[BenchRow], Contract]:
    """A row per (engine, precision, model) with its size and cold start; a row that cannot run keeps its reason.

    Raises:
        CxrEdgeError: no row can run, or the models do not share one contract (bench compares one model's variants).
    """
    specs, unreadable_models = default_rows(models, backends, precisions, opener.precision_of)
    rows = [BenchRow("-", "-", str(path), error=reason) for path, reason in unreadable_models]
    contract = None
    for backend, precision, path in specs:
        progress(f"opening {path.name} on {backend}")
        row = BenchRow(backend, precision, str(path))
        rows.append(row)
        try:
            classifier = opener.open(path, backend)
        except CxrEdgeError as exc:
            row.error = str(exc)
            continue
        if contract is None:
            contract = classifier.contract
        elif classifier.contract != contract:
            raise CxrEdgeError(f"{path} carries a different preprocessing contract from {specs[0][2]}; "
                               "bench compares one model in its variants, not different models")
        try:
            row.figures["size_mb"] = model_size_mb(path)
            if not ENGINES[backend].remote:  # a server's start-up is not this machine's cold start
                row.figures |= _cold_figures(path, backend, threads)
        except (CxrEdgeError, OSError, subprocess.SubprocessError, ValueError) as exc:
            row.error = first_line(exc)
            continue
        row.run = lambda b, c=classifier: c.run(b)[PROBABILITIES]  # every output a prediction asks for
    if contract is None:
        reasons = "; ".join(f"{Path(r.model).name} on {r.backend}: {r.error}" for r in rows)
        raise CxrEdgeError(f"no model could run: {reasons or 'no (backend, precision) pair; check --backends'}")
    return rows, contract


def _reference_row(reference: Reference, contract: Contract, threads: int) -> BenchRow:
    row = BenchRow(reference.backend, "fp32", str(reference.model))
    try:
        row.figures["size_mb"] = reference.model.stat().st_size / 2**20
        row.run = reference.make_runner(contract, threads)
    except Exception as exc:  # a reference that cannot run here is a row with its reason
        row.error = first_line(exc)
    return row


def _warm_up(rows: list[BenchRow], one: np.ndarray, warmup: int) -> list[BenchRow]:
    """Warm every runnable row; returns those that ran (a row whose inference fails keeps the reason)."""
    for row in rows:
        if row.run is None:
            continue
        try:
            for _ in range(max(1, warmup)):
                row.run(one)
        except Exception as exc:
            row.error, row.run = f"inference failed: {first_line(exc)}", None
    return [row for row in rows if row.run is not None]


def _latency(live: list[BenchRow], one: np.ndarray, runs: int) -> None:
    samples = time_interleaved([row.run for row in live], one, runs, block=BLOCK)
    for row, times in zip(live, samples, strict=True):
        times = np.asarray(times)
        row.figures["latency_ms"] = {"p50": float(np.median(times)), "p90": float(np.percentile(times, 90)),
                                     "p99": float(np.percentile(times, 99)), "min": float(times.min()),
                                     "max": float(times.max())}
        row.figures["raw_latency_ms"] = times.round(4).tolist()


def _throughput(live: list[BenchRow], one: np.ndarray, batches: Sequence[int]) -> None:
    """Images per second at each batch size: the median of `THROUGHPUT_PASSES` timed passes, rows and batch sizes
    taking turns in every pass, so that a busy moment of the machine hits them alike instead of one figure."""
    rates: dict[tuple[int, int], list[float]] = {}
    for _ in range(THROUGHPUT_PASSES):
        for batch_size in batches:
            batch = np.repeat(one, batch_size, axis=0)
            repeats = max(2, 32 // batch_size)
            for i, row in enumerate(live):
                row.run(batch)
                start = time.perf_counter()
                for _ in range(repeats):
                    row.run(batch)
                rates.setdefault((i, batch_size), []).append(batch_size * repeats / (time.perf_counter() - start))
    for (i, batch_size), values in rates.items():
        live[i].figures.setdefault("throughput_ips", {})[str(batch_size)] = float(np.median(values))


def _ratios(rows: list[BenchRow], reference_backend: str | None) -> None:
    fp32 = {r.backend: r.figures["latency_ms"]["p50"] for r in rows if r.precision == "fp32"}
    reference = next((r for r in rows if r.backend == reference_backend), None)
    for row in rows:
        p50 = row.figures["latency_ms"]["p50"]
        row.figures["speedup_vs_fp32"] = fp32[row.backend] / p50 if row.backend in fp32 else None
        row.figures["speedup_vs_reference"] = (reference.figures["latency_ms"]["p50"] / p50) if reference else None
        row.figures["budget_headroom"] = budget_verdict(p50)
        row.figures["budget_ratio"] = BUDGET_S * 1000 / p50
        if ENGINES.get(row.backend) is not None and ENGINES[row.backend].remote:
            here = [r for r in rows if r.model == row.model and r.backend in ENGINES and not ENGINES[r.backend].remote]
            if here:  # what the network and (de)serialisation add, against the fastest local run of the model
                local = min(r.figures["latency_ms"]["p50"] for r in here)
                row.figures["remote_overhead_ms"] = p50 - local


def _finding_accuracy(rows: list[BenchRow], data_dir: Path | Sequence[Path], contract: Contract) -> list[str]:
    """A multi-label model on finding folders: per finding AUROC, and sensitivity and specificity at its operating
    point with intervals; agreement with FP32 is the share of films with the same positive findings."""
    from .findings import finding_figures, read_finding_folders

    labels = read_finding_folders([data_dir] if isinstance(data_dir, (str, Path)) else data_dir,
                                  contract.class_names)
    images, kept, errors = load_many(list(labels.paths), contract)
    if not kept:
        raise CxrEdgeError(f"{data_dir}: none of the {len(labels.paths)} labelled images could be read")
    inputs, present = to_input(images, contract), labels.present[kept]
    points = np.array(contract.operating_points)
    called = {}
    for i, row in enumerate(rows):
        scores = np.concatenate([row.run(inputs[j:j + 16]) for j in range(0, len(inputs), 16)])
        called[i] = scores >= points
        row.figures |= {"images": len(kept), "per_finding": finding_figures(scores, present, contract.operating_points,
                                                                            contract.class_names)}
    _agreement(rows, called, lambda a, b: np.all(a == b, axis=1))
    return [str(e) for e in errors]


def _accuracy(rows: list[BenchRow], data_dir: Path | Sequence[Path], contract: Contract) -> list[str]:
    """Accuracy, macro-F1, accuracy per class-source-age cell and agreement with FP32 for every row; returns the
    files that could not be read."""
    if contract.multi_label:
        return _finding_accuracy(rows, data_dir, contract)
    inputs, unreadable, samples = _labelled_inputs(data_dir, contract)
    predicted = {}
    for i, row in enumerate(rows):
        probabilities = np.concatenate([row.run(inputs[j:j + 16]) for j in range(0, len(inputs), 16)])
        predicted[i] = probabilities.argmax(axis=1)
        row.figures |= label_figures(samples, probabilities, contract)
    _agreement(rows, predicted, np.equal)
    return unreadable


def _agreement(rows: list[BenchRow], answers: dict[int, np.ndarray],
               same: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    """Each row's share of films answered as the FP32 row of its engine answers them (`same` per film)."""
    fp32_rows = {r.backend: i for i, r in enumerate(rows) if r.precision == "fp32"}
    for i, row in enumerate(rows):
        reference = fp32_rows.get(row.backend)
        row.figures["agreement_fp32"] = (float(np.mean(same(answers[i], answers[reference])))
                                         if reference is not None else None)


def _warnings(rows: list[BenchRow], load: float) -> list[str]:
    found = []
    if load > 0.5 * (os.cpu_count() or 1):
        found.append(f"the machine was loaded (1-minute load average {load:.1f} on {os.cpu_count()} cores): "
                     "figures may be pessimistic")
    for row in rows:
        if row.error is not None:
            found.append(f"{row.backend} {row.precision} ({Path(row.model).name}) did not run: {row.error}")
            continue
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
