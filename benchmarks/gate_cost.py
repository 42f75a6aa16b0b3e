"""What the gate costs: batch-1 latency of a model with the gate against one without, in the same run.

Usage: python benchmarks/gate_cost.py BEFORE_MODEL AFTER_MODEL [--runs 400] [--out benchmarks/gate]

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

from cxr_edge.runtime.bench import machine_info, versions
from cxr_edge.runtime.classifier import Classifier
from cxr_edge.runtime.model_file import engines_for, model_format
from cxr_edge.runtime.timing import time_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "gate")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    rows = {}
    for engine in engines_for(model_format(args.after)):
        pair = [Classifier.open(path, backend=engine.name, threads=threads) for path in (args.before, args.after)]
        batch = np.random.default_rng(0).normal(size=(1, pair[1].contract.channels,
                                                      *pair[1].contract.input_size)).astype(np.float32)
        for classifier in pair:
            for _ in range(20):
                classifier.run(batch)
        before, after = time_interleaved([c.run for c in pair], batch, args.runs, block=10)
        rows[engine.name] = {"before_ms": statistics.median(before), "after_ms": statistics.median(after),
                             "ratio": statistics.median(after) / statistics.median(before),
                             "outputs_after": list(pair[1].outputs)}
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "threads": threads, "runs": args.runs, "before": str(args.before),
              "after": str(args.after), "engines": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# What the gate costs", "", f"Measured {record['created']} on {record['machine']['cpu']} "
             f"({', '.join(record['machine']['flags'])}), {threads} threads, {args.runs} interleaved batch-1 runs "
             f"each: `python benchmarks/gate_cost.py {args.before.name} {args.after.name}`.", "",
             "| engine | before (no gate) p50 ms | after (gate) p50 ms | after / before |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {row['before_ms']:.2f} | {row['after_ms']:.2f} | {row['ratio']:.2f} |"
              for name, row in rows.items()]
    (args.out / "cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
