"""What the gate costs: batch-1 latency of a model with the gate against one without, in the same run.

Usage: python benchmarks/gate_cost.py BEFORE AFTER [BEFORE AFTER ...] [--runs 400] [--out benchmarks/gate]

Both models are timed on every engine that runs them, interleaved in blocks of ten (`time_interleaved`), each
asked for every output a prediction asks for (with the gate: probabilities, gate score and orientation), on the
same synthetic input, with the same threads. The ratio after/before is the figure; absolute times drift with the
machine. BEFORE is typically the previous release's INT8 model (``git show REV:runtime/models/...``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.model_file import engines_for, model_format
from cxr_edge.runtime.timing import time_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="pairs of model files: before, after")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "gate")
    args = parser.parse_args()
    if len(args.models) % 2:
        parser.error("give models in pairs: before, after")
    threads = os.cpu_count() or 1
    rows = {}
    pairs = list(zip(args.models[::2], args.models[1::2], strict=True))
    for before_path, after_path in pairs:
        for engine in engines_for(model_format(after_path)):
            rows[f"{after_path.name} on {engine.name}"] = _time_pair(before_path, after_path, engine.name, threads,
                                                                     args.runs)
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "threads": threads, "runs": args.runs,
              "pairs": [[str(a), str(b)] for a, b in pairs], "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# What the gate costs", "", f"Measured {record['created']} on {record['machine']['cpu']} "
             f"({', '.join(record['machine']['flags'])}), {threads} threads, {args.runs} interleaved batch-1 runs "
             f"each, every output a prediction asks for: `python benchmarks/gate_cost.py "
             f"{' '.join(p.name for p in args.models)}` (before: the previous release's files, without a gate).", "",
             "| model, engine | before (no gate) p50 ms | after (gate) p50 ms | after / before |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {row['before_ms']:.2f} | {row['after_ms']:.2f} | {row['ratio']:.2f} |"
              for name, row in rows.items()]
    (args.out / "cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _time_pair(before_path: Path, after_path: Path, engine: str, threads: int, runs: int) -> dict:
    pair = [Classifier.open(path, backend=engine, threads=threads) for path in (before_path, after_path)]
    batch = np.random.default_rng(0).normal(size=(1, pair[1].contract.channels,
                                                  *pair[1].contract.input_size)).astype(np.float32)
    for classifier in pair:
        for _ in range(20):
            classifier.run(batch)
    before, after = time_interleaved([c.run for c in pair], batch, runs, block=10)
    return {"before_ms": statistics.median(before), "after_ms": statistics.median(after),
            "ratio": statistics.median(after) / statistics.median(before), "outputs_after": list(pair[1].outputs)}


if __name__ == "__main__":
    main()
