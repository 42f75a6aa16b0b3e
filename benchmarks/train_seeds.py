"""Training speed and stability: the default `cxr-edge train` recipe, once per seed, on the same split.

Usage: python benchmarks/train_seeds.py [--data DIR] [--seeds 0 1 2] [--out benchmarks/training]

Writes training.json (every figure) and training.md (the table) into --out, and prints the table. Each run is a
separate `cxr-edge train` process, timed from start to exit, so the figure is what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="class-folder dataset (default: $CXR_DATA or the shared set)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "training")
    args = parser.parse_args()

    import torch

    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            run_dir = Path(scratch) / f"seed{seed}"
            command = [sys.executable, "-m", "cxr_edge.cli", "train", "--out", str(run_dir), "--seed", str(seed)]
            if args.data:
                command += ["--data", args.data]
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
            metrics = json.loads((run_dir / "metrics.json").read_text())
            validation = metrics["validation"]
            runs.append({"seed": seed, "wall_seconds": round(seconds, 1), "best_epoch": metrics["best_epoch"],
                         "epochs_run": metrics["epochs_run"], "accuracy": validation["accuracy"],
                         "macro_f1": validation["macro_f1"],
                         "per_class_f1": {k: v["f1"] for k, v in validation["per_class"].items()},
                         "config": metrics["config"],
                         "data_manifest_hash": metrics["provenance"]["data_manifest_hash"]})
            print(f"seed {seed}: macro-F1 {validation['macro_f1']:.3f} in {seconds / 60:.1f} min", flush=True)

    f1s = [r["macro_f1"] for r in runs]
    summary = {"macro_f1_mean": statistics.mean(f1s), "macro_f1_min": min(f1s), "macro_f1_max": max(f1s),
               "max_deviation_from_mean": max(abs(f - statistics.mean(f1s)) for f in f1s),
               "wall_seconds_max": max(r["wall_seconds"] for r in runs)}
    from cxr_edge.runtime.evaluation.bench import machine_info

    machine = machine_info() | {"torch": str(torch.__version__)}
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine,
              "runs": runs, "summary": summary}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")

    classes = list(runs[0]["per_class_f1"])
    lines = [
        f"Default `cxr-edge train` (efficientnet_lite0, 224 px), split seed 0 (20 % validation), on {machine['cpu']}, "
        f"{machine['cores']} cores, torch {machine['torch']}; measured {record['created']}.",
        "",
        "| seed | wall time | epochs (best) | accuracy | macro-F1 | " + " | ".join(f"F1 {c}" for c in classes) + " |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in classes) + " |",
    ]
    for r in runs:
        lines.append(f"| {r['seed']} | {r['wall_seconds'] / 60:.1f} min | {r['epochs_run']} ({r['best_epoch']}) | "
                     f"{r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
                     + " | ".join(f"{r['per_class_f1'][c]:.3f}" for c in classes) + " |")
    lines += ["", f"Macro-F1 {summary['macro_f1_mean']:.3f} mean, {summary['macro_f1_min']:.3f}-"
                  f"{summary['macro_f1_max']:.3f} range (at most {summary['max_deviation_from_mean']:.3f} from the "
                  f"mean); slowest run {summary['wall_seconds_max'] / 60:.1f} min."]
    (args.out / "training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
