"""Which training recipe: compare finished runs by their worst group, not their mean.

Usage: python benchmarks/recipes.py RUN_DIR [RUN_DIR ...] [--data DIR ...] [--out benchmarks/training/recipes.md]

Each RUN_DIR is a `cxr-edge train` output (metrics.json and checkpoint.pt) on the same data and split. Per run:
validation accuracy per class-source-age cell and per age group (95 % bootstrap intervals over patients), the
worst cell, and the same validation images under acquisition changes another hospital would bring (noise, edge
enhancement, blur, gamma, lower contrast): how many adult normals are then called covid19, how many COVID-19
films are still found, how many children are right. The recipe to ship is the one whose worst figure is best.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cxr_edge.export.to_onnx import model_from_checkpoint
from cxr_edge.export.train import load_checkpoint
from cxr_edge.runtime.evaluation.audit import STRESSES
from cxr_edge.runtime.evaluation.dataset import CLASS_NAMES, resolve_data_dirs, scan_dataset
from cxr_edge.runtime.model.preprocess import load_many, to_input


def stress(run: Path, roots: list[Path]) -> dict:
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    contract, model = checkpoint["contract"], model_from_checkpoint(checkpoint)
    metrics = json.loads((run / "metrics.json").read_text())
    held = {f["file"] for f in metrics["val_files"]}
    samples = [s for s in scan_dataset(roots).samples if s.key in held]
    images, kept, _ = load_many([s.path for s in samples], contract)
    samples = [samples[i] for i in kept]
    labels = np.asarray([s.label for s in samples])
    adult_normal = np.asarray([s.label == 0 and s.age == "adult" for s in samples])
    covid = labels == CLASS_NAMES.index("covid19")
    child = np.asarray([s.age == "child" for s in samples])
    found = {}
    for name, change in ({"as given": lambda image: image} | STRESSES).items():
        altered = np.clip(np.stack([change(image) for image in images]), 0, 1).astype(np.float32)
        with torch.inference_mode():
            predicted = model(torch.from_numpy(to_input(altered, contract))).argmax(dim=1).numpy()
        found[name] = {"adult_normal_called_covid19": float(np.mean(predicted[adult_normal] == 1)),
                       "covid19_recall": float(np.mean(predicted[covid] == 1)),
                       "child_accuracy": float(np.mean(predicted[child] == labels[child]))}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "training" / "recipes.md")
    args = parser.parse_args()
    roots = resolve_data_dirs(args.data)
    torch.set_num_threads(2)
    lines = ["# Training recipes compared", "",
             f"`python benchmarks/recipes.py {' '.join(str(r) for r in args.runs)}`: validation images held out "
             "by patient (the same split in every run), FP32. Intervals: 95 % bootstrap over patients.", ""]
    record = {}
    for run in args.runs:
        metrics = json.loads((run / "metrics.json").read_text())
        config = metrics["config"]
        cells, ages = metrics["groups"]["cell"], metrics["groups"]["age"]
        worst = min(cells.items(), key=lambda item: item[1]["accuracy"])
        stressed = stress(run, roots)
        record[run.name] = {"config": config, "cells": cells, "ages": ages, "stress": stressed}
        lines += [f"## {run.name}", "", f"intensity {config['intensity']}, balanced {config['balanced']}, epoch "
                  f"{metrics['best_epoch']} of {metrics['epochs_run']}; worst cell {worst[0]} "
                  f"{worst[1]['accuracy']:.2f}", "", "| group | images | right (95 % interval) |",
                  "| --- | --- | --- |"]
        for name, row in (cells | ages).items():
            low, high = row["ci95"]
            lines.append(f"| {name} | {row['images']} | {row['accuracy']:.2f} ({low:.2f}-{high:.2f}) |")
        lines += ["", "| acquisition change | adult normals called covid19 | COVID-19 found | children right |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {name} | {row['adult_normal_called_covid19']:.0%} | {row['covid19_recall']:.0%} | "
                  f"{row['child_accuracy']:.0%} |" for name, row in stressed.items()]
        lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
