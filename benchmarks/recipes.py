"""Which training recipe: compare finished runs by their worst group, not their mean.

Usage: python benchmarks/recipes.py RUN_DIR [RUN_DIR ...] [--data DIR ...] [--out benchmarks/training/recipes.md]

Each RUN_DIR is a `cxr-edge train` output (metrics.json and checkpoint.pt) on the same data and split. Per run:
validation accuracy per label-source-age cell, per age group and per view (95 % bootstrap intervals over
patients), the worst cell, each finding's recall, and the same validation images under acquisition changes
another hospital would bring (noise, edge enhancement, blur, gamma, lower contrast): how many adult normals are
then called covid19, how many COVID-19 films and adult pneumonias are still found, how many children are right.
The recipe to ship is the one whose worst figure is best.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from cxr_edge.export.card import kept_weights
from cxr_edge.export.to_onnx import model_from_checkpoint
from cxr_edge.export.train import load_checkpoint
from cxr_edge.runtime.evaluation.audit import STRESSES
from cxr_edge.runtime.evaluation.bench import machine_info
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
from cxr_edge.runtime.model.preprocess import load_many, to_input


def stress(run: Path, roots: list[Path]) -> dict:
    """The run's validation images as given and under acquisition changes: the figures the held-out bars speak of."""
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    contract, model = checkpoint["contract"], model_from_checkpoint(checkpoint)
    temperature = checkpoint["reliability"]["policy"]["temperature"]  # as the runtime applies it
    metrics = json.loads((run / "metrics.json").read_text())
    held = {f["file"] for f in metrics["val_files"]}
    samples = [s for s in scan_dataset(roots, contract.class_names).samples if s.key in held]
    images, kept, _ = load_many([s.path for s in samples], contract)
    samples = [samples[i] for i in kept]
    groups = {
        "adult_normal_called_covid19": ([s.label == "normal" and s.age == "adult" for s in samples], "covid19"),
        "covid19_recall": ([s.label == "covid19" for s in samples], "covid19"),
        "adult_pneumonia_found": ([s.label == "pneumonia" for s in samples], "pneumonia"),
    }
    found = {}
    for name, change in ({"as given": lambda image: image} | STRESSES).items():
        altered = np.clip(np.stack([change(image) for image in images]), 0, 1).astype(np.float32)
        with torch.inference_mode():
            logits = model(torch.from_numpy(to_input(altered, contract)))
            probabilities = (logits / temperature).softmax(dim=1).numpy()
        top = [contract.class_names[i] for i in probabilities.argmax(axis=1)]
        findings = np.asarray([contract.finding(dict(zip(contract.class_names, row, strict=True)))[0]
                               for row in probabilities])
        found[name] = {key: float(np.mean(findings[np.asarray(mask)] == wanted)) for key, (mask, wanted) in
                       groups.items()}
        child = [t in s.classes for t, s in zip(top, samples, strict=True) if s.age == "child"]
        found[name]["child_accuracy"] = float(np.mean(child))
    return found


def describe(run: Path, roots: list[Path]) -> tuple[dict, list[str]]:
    """One run's record and its section of the report."""
    metrics = json.loads((run / "metrics.json").read_text())
    config = metrics["config"]
    groups = metrics["groups"]
    worst = min(groups["cell"].items(), key=lambda item: item[1]["accuracy"])
    stressed = stress(run, roots)
    training = metrics | {"members": metrics["provenance"].get("members")}
    record = {"config": config, "groups": groups, "findings": metrics["findings"], "stress": stressed,
              "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
              "members": training["members"], "best_val_loss": metrics["best_val_loss"]}
    kept = kept_weights(training) if training["members"] else f"seed {config.get('seed', 0)}, " \
        f"{kept_weights(training)}"
    lines = [f"## {run.name}", "", f"augmentation {config.get('augmentation', 'standard')}, thawed from epoch "
             f"{config.get('thaw_epoch') or 'never'}, label weights {config.get('label_weights') or 'equal'}; {kept}; "
             f"validation loss {metrics['best_val_loss']:.3f}; worst cell {worst[0]} {worst[1]['accuracy']:.2f}",
             "", "| group | images | right (95 % interval) |", "| --- | --- | --- |"]
    for kind in ("cell", "age", "view"):
        for name, row in groups[kind].items():
            low, high = row["ci95"]
            lines.append(f"| {name} | {row['images']} | {row['accuracy']:.2f} ({low:.2f}-{high:.2f}) |")
    lines += ["", "| finding | images | recall (95 % interval) | precision |", "| --- | --- | --- | --- |"]
    for name, row in metrics["findings"]["per_finding"].items():
        low, high = row["ci95"]
        lines.append(f"| {name} | {row['images']} | {row['recall']:.2f} ({low:.2f}-{high:.2f}) | "
                     f"{row['precision']:.2f} |")
    lines += ["", "| acquisition change | adult normals called covid19 | COVID-19 found | adult pneumonia found "
              "| children right |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {row['adult_normal_called_covid19']:.0%} | {row['covid19_recall']:.0%} | "
              f"{row['adult_pneumonia_found']:.0%} | {row['child_accuracy']:.0%} |" for name, row in stressed.items()]
    return record, lines + [""]


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
             "by patient (the same split in every run), FP32 with each run's fitted temperature. Intervals: 95 % "
             "bootstrap over patients. A pneumonia of unknown type is right when called either pneumonia; findings "
             "sum their classes.", ""]
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(), "runs": {}}
    for run in args.runs:
        record["runs"][run.name], section = describe(run, roots)
        lines += section
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
