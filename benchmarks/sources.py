"""Leave one source out: how would a hospital the model has never seen fare?

Usage: python benchmarks/sources.py [--data DIR ...] [--out benchmarks/sources] [--work runs/sources]

For each adult source (the two COVID-19 sources, the two copies of NIH normals, the NIH pneumonias with their
normals), the default recipe is trained without that source (`TrainConfig.exclude_sources`), exported with its
gate, and judged on every image of the source it never saw, per label: how many it gets right (a pneumonia of
unknown type is right when called either pneumonia; with a 95 % bootstrap interval over patients), how many it
calls covid19, its finding, and how many its gate rejects. The children's source cannot be left out: it is the
only one of two classes.
Trained models stay in --work, so a rerun only re-measures. Writes sources.json and sources.md into --out.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console

from cxr_edge.export.config import TrainConfig
from cxr_edge.export.to_onnx import export_onnx
from cxr_edge.export.train import train
from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
from cxr_edge.runtime.evaluation.metrics import bootstrap_interval
from cxr_edge.runtime.model.classifier import Classifier

HELD_OUT = ("hannover-mhh", "ieee8023-covid", "rsna-nih", "nih-cxr14")


def judge_source(model: Path, samples: list, console: Console) -> dict[str, dict]:
    """Per label of the source's images: right, called covid19, the finding's share right, rejected."""
    classifier = Classifier.open(model, backend="ort", mode="throughput")
    results = classifier.predict([s.path for s in samples], batch_size=16)
    rows = {}
    for label in sorted({s.label for s in samples}):
        pairs = [(r, s) for r, s in zip(results, samples, strict=True) if s.label == label]
        right = np.asarray([r.top in s.classes for r, s in pairs])
        found = np.asarray([classifier.contract.finding_of(r.top) == classifier.contract.finding_of(s.classes[0])
                            for r, s in pairs])
        low, high = bootstrap_interval(right, [s.group for _, s in pairs])
        rows[label] = {"class": label, "images": len(pairs), "accuracy": float(right.mean()), "ci95": [low, high],
                       "finding_right": float(found.mean()),
                       "called_covid19": float(np.mean([r.top == "covid19" for r, _ in pairs])),
                       "rejected": float(np.mean([r.status == "rejected" for r, _ in pairs])),
                       "uncertain": float(np.mean([r.status == "uncertain" for r, _ in pairs]))}
        console.print(f"  {label}: {rows[label]}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", default=None, help="labelled data (default: $CXR_DATA)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "sources")
    parser.add_argument("--work", type=Path, default=Path("runs") / "sources")
    args = parser.parse_args()
    console = Console(stderr=True)
    roots = resolve_data_dirs(args.data)
    dataset = scan_dataset(roots)
    held_out = {}
    for source in HELD_OUT:
        work = args.work / f"without-{source}"
        if not (work / "checkpoint.pt").exists():
            console.print(f"[bold]training without {source}[/]")
            train(TrainConfig(exclude_sources=(source,)), roots, work, console=console, progress=False)
        model = work / "model.onnx"
        if not model.exists():
            export_onnx(work / "checkpoint.pt", model)
        held_out[source] = judge_source(model, [s for s in dataset.samples if s.source == source], console)
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "roots": [r.name for r in roots], "held_out": held_out}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sources.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Leave one source out", "", f"Measured {record['created']} ({record['machine']['cpu']}); "
             "`python benchmarks/sources.py`. Each row: the default recipe trained without that source, judged on "
             "all of its images (FP32, ONNX Runtime). Intervals: 95 % bootstrap over patients.", "",
             "| source left out | label | images | right (95 % interval) | finding right | called covid19 | "
             "rejected by the gate |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for source, labels in held_out.items():
        for label, row in labels.items():
            low, high = row["ci95"]
            lines.append(f"| {source} | {label} | {row['images']} | {row['accuracy']:.2f} ({low:.2f}-{high:.2f}) | "
                         f"{row['finding_right']:.0%} | {row['called_covid19']:.0%} | {row['rejected']:.0%} |")
    (args.out / "sources.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
