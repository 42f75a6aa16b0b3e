"""The network near its floor: per-layer profiles, the floor, and engine settings measured side by side.

Usage: python benchmarks/network.py [--data DIR ...] [--before REF] [--rounds 40] [--out benchmarks/network]

For the shipped INT8 model (and, with --before, the shipped model of that git commit, the release this work
started from), one image at a time, threads pinned, warm: every variant below runs in interleaved rounds of 20
inferences and the median of the rounds' medians is reported. A variant is kept only when its probabilities stay
within 1e-3 of the as-shipped settings on real films (`PARITY`); the table says which.

- OpenVINO as shipped (the runtime's `OpenVinoBackend`: LATENCY hint, every core, f32 inference precision), the
  same settings compiled here, on 1 thread, with core pinning, without the heatmap output (`cam`), and in bf16
  (AMX; measured, not kept: it moves probabilities);
- ONNX Runtime as shipped (the runtime's `OrtBackend`: sequential, no spinning, its optimised graph cached), the
  graph optimised at every load instead, with spinning threads, and with the optimised graph saved here.

Then the per-layer profile on both engines (OpenVINO's performance counters, ONNX Runtime's profiler) by
operator type, and the floor: the network's multiply-accumulates (from the IR's convolutions and matrix products)
over this CPU's INT8 peak (AMX: 1024 per cycle and core; AVX-512 VNNI: 128; AVX2 VNNI: 64), at its clock.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import openvino as ov

from cxr_edge.runtime.cpu import cpu_flags
from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
from cxr_edge.runtime.model.backends import open_backend
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.model_file import INPUT_NAME, PROBABILITIES
from cxr_edge.runtime.model.preprocess import load_many, to_input

REPOSITORY = Path(__file__).resolve().parent.parent
PARITY = 1e-3
THREADS = os.cpu_count() or 1
Infer = Callable[[np.ndarray], np.ndarray]


def openvino_variant(xml: Path, config: dict, *, drop: tuple[str, ...] = ()) -> Infer:
    core = ov.Core()
    model = core.read_model(str(xml))
    model.reshape({INPUT_NAME: [1, *model.inputs[0].get_partial_shape().to_shape()[1:]]}
                  if model.inputs[0].get_partial_shape().is_static else {INPUT_NAME: [1, 1, 224, 224]})
    if drop:
        kept = [r for r in model.get_results() if not set(r.output(0).get_names()) & set(drop)]
        model = ov.Model(kept, model.get_parameters(), "kept")
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    port = compiled.output(PROBABILITIES)
    return lambda x: np.array(request.infer({INPUT_NAME: x})[port])


def ort_variant(onnx: Path, *, spinning: bool, optimized: Path | None = None) -> Infer:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    source = onnx
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        source = optimized
    session = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run([PROBABILITIES], {INPUT_NAME: x})[0]


def backend_variant(path: Path, engine: str) -> Infer:
    """The runtime's own engine object, exactly as `cxr-edge predict` opens it (settings, cached graph)."""
    backend = open_backend(path, engine, threads=THREADS, mode="latency")
    return lambda x: backend.run(x, (PROBABILITIES,))[PROBABILITIES]


SHIPPED_OV = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": THREADS, "INFERENCE_PRECISION_HINT": "f32"}


def variants(models: Path, scratch: Path, label: str) -> dict[str, tuple[str, Infer]]:
    """Every setting tried, by name, with the name of its engine's as-shipped settings (its parity reference)."""
    xml, onnx = models / "cxr-edge-int8-openvino.xml", models / "cxr-edge-int8.onnx"
    ov_base, ort_base = f"{label} OpenVINO as shipped", f"{label} ONNX Runtime as shipped"
    return {
        ov_base: (ov_base, backend_variant(xml, "openvino")),
        f"{label} OpenVINO compiled here, same settings": (ov_base, openvino_variant(xml, SHIPPED_OV)),
        f"{label} OpenVINO 1 thread": (ov_base, openvino_variant(xml, SHIPPED_OV | {"INFERENCE_NUM_THREADS": 1})),
        f"{label} OpenVINO pinned cores": (ov_base, openvino_variant(xml, SHIPPED_OV | {"ENABLE_CPU_PINNING": True})),
        f"{label} OpenVINO without the cam output": (ov_base, openvino_variant(xml, SHIPPED_OV, drop=("cam",))),
        f"{label} OpenVINO bf16": (ov_base, openvino_variant(xml, SHIPPED_OV | {"INFERENCE_PRECISION_HINT": "bf16"})),
        ort_base: (ort_base, backend_variant(onnx, "ort")),
        f"{label} ONNX Runtime graph optimised at each load": (ort_base, ort_variant(onnx, spinning=False)),
        f"{label} ONNX Runtime spinning threads": (ort_base, ort_variant(onnx, spinning=True)),
        f"{label} ONNX Runtime saved optimised graph": (ort_base, ort_variant(
            onnx, spinning=False, optimized=scratch / f"{label}-opt.onnx")),
    }


def films(roots: list[Path], count: int = 24) -> np.ndarray:
    classifier = Classifier.open(None, backend="ort")
    samples = scan_dataset(roots).samples[::max(1, len(scan_dataset(roots).samples) // count)][:count]
    images, _, _ = load_many([s.path for s in samples], classifier.contract)
    return to_input(images, classifier.contract)


def parity(runs: dict[str, tuple[str, Infer]], inputs: np.ndarray) -> dict[str, float]:
    """Per variant, the largest change of a probability against its engine's as-shipped settings."""
    outputs = {name: np.concatenate([run(x[None]) for x in inputs]) for name, (_, run) in runs.items()}
    return {name: float(np.abs(outputs[name] - outputs[reference]).max()) for name, (reference, _) in runs.items()}


def timing(runs: dict[str, tuple[str, Infer]], image: np.ndarray, rounds: int) -> dict[str, float]:
    for _, run in runs.values():
        for _ in range(20):
            run(image)
    medians: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (_, run) in runs.items():
            times = []
            for _ in range(20):
                start = time.perf_counter()
                run(image)
                times.append((time.perf_counter() - start) * 1000)
            medians[name].append(statistics.median(times))
    return {name: statistics.median(values) for name, values in medians.items()}


def openvino_profile(xml: Path, image: np.ndarray) -> dict[str, float]:
    core = ov.Core()
    model = core.read_model(str(xml))
    request = core.compile_model(model, "CPU", SHIPPED_OV | {"PERF_COUNT": True}).create_infer_request()
    for _ in range(50):
        request.infer({INPUT_NAME: image})
    totals: dict[str, float] = collections.defaultdict(float)
    for layer in request.get_profiling_info():
        totals[f"{layer.node_type} ({layer.exec_type})"] += layer.real_time.total_seconds() * 1e3
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def ort_profile(onnx: Path, image: np.ndarray, scratch: Path) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.enable_profiling = True
    options.profile_file_prefix = str(scratch / "ort-profile")
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    for _ in range(50):
        session.run([PROBABILITIES], {INPUT_NAME: image})
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1000 / 50
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def floor(xml: Path) -> dict[str, float | str]:
    """Multiply-accumulates of the convolutions and matrix products, and the time they take at the INT8 peak."""
    model = ov.Core().read_model(str(xml))
    macs = 0
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind in ("Convolution", "GroupConvolution", "MatMul") and op.get_output_partial_shape(0).is_static:
            out = int(np.prod(list(op.get_output_shape(0))))
            weights = list(op.input(1).get_partial_shape().to_shape()) if op.input(1).get_partial_shape().is_static \
                else []
            per_output = int(np.prod(weights[1:])) if kind == "Convolution" else \
                int(np.prod(weights[2:])) if kind == "GroupConvolution" else (weights[0] if weights else 0)
            macs += out * per_output
    flags = cpu_flags()
    per_cycle, unit = ((1024, "AMX") if "amx_int8" in flags else (128, "AVX-512 VNNI") if "avx512_vnni" in flags
                       else (64, "AVX2 VNNI") if "avx_vnni" in flags else (32, "AVX2"))
    clock = _clock_ghz()
    peak = per_cycle * clock * 1e9 * THREADS
    return {"macs": macs, "unit": unit, "clock_ghz": clock, "peak_tmacs": peak / 1e12,
            "floor_ms": macs / peak * 1000}


def _clock_ghz() -> float:
    speeds = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("cpu MHz")]
    return round(max(speeds) / 1000, 2) if speeds else 2.0


def before_models(ref: str, scratch: Path) -> Path:
    folder = scratch / "before"
    folder.mkdir()
    for name in ("cxr-edge-int8-openvino.xml", "cxr-edge-int8-openvino.bin", "cxr-edge-int8.onnx"):
        data = subprocess.run(["git", "-C", str(REPOSITORY), "show", f"{ref}:runtime/models/{name}"],
                              capture_output=True, check=True).stdout
        (folder / name).write_bytes(data)
    return folder


def markdown(record: dict) -> str:
    lines = ["# The network near its floor", "",
             f"Measured {record['created']} on {record['machine']['cpu']} ({', '.join(record['machine']['flags'])}), "
             f"{THREADS} cores; `python benchmarks/network.py"
             f"{' --before ' + record['before'] if record['before'] else ''}`; "
             f"one image, warm, median of {record['rounds']} interleaved rounds of 20. Kept: probabilities within "
             f"{PARITY} of the engine's as-shipped settings on {record['films']} real films.", "",
             "| model and setting | batch-1 ms | x as shipped | x of floor | largest change | kept |",
             "| --- | --- | --- | --- | --- | --- |"]
    floor_ms = record["floor"]["floor_ms"]
    for name, ms in record["timing"].items():
        base = record["timing"][record["references"][name]]
        change = record["parity"][name]
        lines.append(f"| {name} | {ms:.2f} | {base / ms:.2f} | {ms / floor_ms:.0f} | {change:.1e} | "
                     f"{'yes' if change <= PARITY else 'no'} |")
    f = record["floor"]
    lines += ["", f"Floor: {f['macs'] / 1e6:.0f} million multiply-accumulates at the {f['unit']} INT8 peak "
              f"({f['peak_tmacs']:.1f} T per second on {THREADS} cores at {f['clock_ghz']} GHz): {floor_ms:.3f} ms.",
              "", "OpenVINO profile of the shipped model (ms per inference by operator and kernel):", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in list(record["profile_openvino"].items())[:8]]
    lines += ["", "ONNX Runtime profile (ms per inference by operator):", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in list(record["profile_ort"].items())[:8]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--before", default=None)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "network")
    args = parser.parse_args()
    shipped = Classifier.open(None, backend="ort").path.parent
    inputs = films(resolve_data_dirs(args.data))
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        runs = variants(shipped, scratch, "now")
        if args.before:
            runs = variants(before_models(args.before, scratch), scratch, "before") | runs
        record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
                  "versions": versions(), "before": args.before, "rounds": args.rounds, "films": len(inputs),
                  "references": {name: reference for name, (reference, _) in runs.items()},
                  "parity": parity(runs, inputs), "timing": timing(runs, inputs[:1], args.rounds),
                  "floor": floor(shipped / "cxr-edge-int8-openvino.xml"),
                  "profile_openvino": openvino_profile(shipped / "cxr-edge-int8-openvino.xml", inputs[:1]),
                  "profile_ort": ort_profile(shipped / "cxr-edge-int8.onnx", inputs[:1], scratch)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "network.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "network.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
