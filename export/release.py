"""The shipped model, reproducibly: `make release-model` (``python -m cxr_edge.export.release``).

One training run on a patient-level 80/20 split of every data root, and the held-out 20 % kept for everything
that must not be tuned on training images: the temperature, the thresholds of the abstention and the gate, and
every figure the model card reports (per label-source-age cell, age group, source and view with bootstrap
intervals, the findings, the gate's rates, INT8 against FP32). A model retrained on all images would have
nothing left to fit those on. Then:
1. export to ONNX with the gate and the contract;
2. INT8 for ONNX Runtime and OpenVINO, calibrated with a committed manifest of training images only;
3. for each shipped file: validation figures, the gate on non-chest inputs built from installed packages and on
   turned and inverted validation films (`cxr_edge.export.ood`), and the shortcut audit;
4. ``release.json`` (every figure) and ``MODEL_CARD.md`` (`cxr_edge.export.card`) beside the model files.
Every path (data, manifest, models folder, the records quoted in the card) comes from the caller: the Makefile's
``release-model`` target names the repository's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console

from ..runtime.evaluation.audit import run_audit
from ..runtime.evaluation.bench import label_figures
from ..runtime.evaluation.dataset import Dataset, Sample, resolve_data_dirs, scan_dataset
from ..runtime.model.classifier import Classifier
from ..runtime.model.model_file import SHIPPED_FP32, SHIPPED_INT8, SHIPPED_OPENVINO
from ..runtime.reading.images import load_image
from . import ood
from .calibration import read_manifest, write_manifest
from .card import model_card
from .config import TrainConfig
from .data import stratified_split
from .provenance import git_commit, package_version
from .quantize import quantize
from .soup import average_runs
from .to_onnx import export_onnx
from .train import train

__all__ = ["build_release", "evaluate_model", "FILES"]

FILES = {"fp32": SHIPPED_FP32, "ort": SHIPPED_INT8, "openvino": SHIPPED_OPENVINO}
ENGINE_OF = {"fp32": "ort", "ort": "ort", "openvino": "openvino"}


def evaluate_model(path: Path, engine: str, val: Sequence[Sample], sets: dict) -> dict:
    """A shipped file on the validation images (per cell, age group, source and view, the findings, with intervals;
    what the gate and the abstention did) and on the gate's test sets."""
    classifier = Classifier.open(path, backend=engine, mode="throughput")
    results = classifier.predict([s.path for s in val], batch_size=16)
    names = classifier.contract.class_names
    probabilities = np.asarray([[r.probabilities[n] for n in names] for r in results])
    figures = label_figures(val, probabilities, classifier.contract)
    statuses = [r.status for r in results]
    figures["validation_status"] = {status: statuses.count(status) for status in ("classified", "uncertain",
                                                                                  "rejected", "failed")}
    figures["gate_sets"] = ood.rejection_rates(classifier, sets)
    figures["top_labels"] = [r.top for r in results]
    return figures


def _train_and_split(data_dirs: Sequence[Path], work: Path, seed: int, members: int, console: Console,
                     reuse: bool) -> tuple[Dataset, list[Sample], list[Sample], dict]:
    """Step 1: the release recipe on a patient-level split, `members` times with seeds `seed`, `seed` + 1, ... and
    one head initialisation, averaged into one network (`soup`); an earlier run's checkpoints in `work` are kept
    when `reuse` is set."""
    dataset = scan_dataset(data_dirs)
    configs = [TrainConfig(seed=seed + k, init_seed=seed, split_seed=seed) for k in range(members)]
    train_part, val_part = stratified_split(dataset.samples, configs[0].val_fraction, seed)
    console.print(f"[bold]1/4 training[/] {members} run(s) on {len(train_part)} images, {len(val_part)} held out "
                  "(by patient)")
    runs = [work / "training"] if members == 1 else [work / "members" / f"seed-{c.seed}" for c in configs]
    for config, run in zip(configs, runs, strict=True):
        if not (reuse and (run / "checkpoint.pt").exists()):
            train(config, dataset.roots, run, console=console, progress=False)
    if members > 1 and not (reuse and (work / "training" / "checkpoint.pt").exists()):
        average_runs(runs, dataset.roots, work / "training", console=console)
    return dataset, train_part, val_part, json.loads((work / "training" / "metrics.json").read_text())


def _export_and_quantise(work: Path, dataset: Dataset, train_part: list[Sample], val_part: list[Sample],
                         manifest: Path, seed: int, console: Console) -> tuple[Path, dict, int]:
    """Step 2: ONNX with parity checked on validation films, then INT8 for both engines from the manifest's
    training images (written if missing; refused if it names a held-out image)."""
    staged = work / "models"
    staged.mkdir(parents=True)
    export_onnx(work / "training" / "checkpoint.pt", staged / FILES["fp32"],
                check_images=[s.path for s in val_part[::max(1, len(val_part) // 8)]])
    if not manifest.exists():
        write_manifest(Dataset(dataset.roots, train_part), manifest, per_class=64, seed=seed)
    chosen = read_manifest(manifest, dataset.roots)
    held_out = {s.key for s in val_part}
    leaked = [s.key for s in chosen if s.key in held_out]
    if leaked:
        raise SystemExit(f"{manifest} names held-out images ({leaked[0]}, ...); calibrate on training images only")
    int8 = {}
    for backend in ("ort", "openvino"):
        report = quantize(staged / FILES["fp32"], staged / FILES[backend], calibration=[s.path for s in chosen],
                          backend=backend, labelled=val_part)
        int8[backend] = report.comparison
        console.print(f"  {backend}: agreement {report.comparison['agreement']:.3f}, "
                      f"INT8 {report.comparison['speedup']:.2f}x")
    return staged, int8, len(chosen)


def _measure(staged: Path, dataset: Dataset, val_part: list[Sample]) -> tuple[dict, dict]:
    """Step 3: every shipped file on the validation images and the gate's sets; the shortcut audit."""
    films = {s.path.name: load_image(s.path) for s in val_part}
    dicoms = ood.dicom_files()
    sets = {"photos": ood.photos(), "synthetic": ood.synthetic(), "dicom": dicoms,
            "dicom_pixels": ood.dicom_pixels(dicoms)} | ood.altered(films)
    evaluations = {name: evaluate_model(staged / FILES[name], ENGINE_OF[name], val_part, sets) for name in FILES}
    audit = run_audit(Classifier.open(staged / FILES["ort"], backend="ort", mode="throughput"), dataset.roots)
    return evaluations, audit


def build_release(data_dirs: Sequence[Path], work: Path, models_dir: Path, manifest: Path, *,
                  int8_record: Path | None = None, sources_record: Path | None = None, seed: int = 0,
                  members: int = 1, console: Console | None = None, reuse_training: bool = False) -> dict:
    """Train, export, quantise and measure the shipped model; write it into `models_dir`; return the record.

    Args:
        data_dirs: the labelled class folders (every root's images keep their source).
        work: scratch folder for the run (must not exist, unless `reuse_training`).
        models_dir: where the release goes (the package's models folder).
        manifest: the calibration manifest (written from the training part, 64 per label, if it does not exist).
        int8_record: the multi-split INT8 benchmark (``benchmarks/int8/int8.json``) quoted in the model card.
        sources_record: the leave-one-source-out benchmark (``benchmarks/sources/sources.json``) quoted too.
        seed: training and split seed.
        members: runs averaged into the shipped network (`cxr_edge.export.soup`; 1: a single run).
        console: where progress goes.
        reuse_training: keep the checkpoint already in `work` and redo export, quantisation and the figures.
    """
    console = console or Console(stderr=True)
    if work.exists() and not reuse_training:
        raise SystemExit(f"{work} exists; remove it or choose another --work folder")
    shutil.rmtree(work / "models", ignore_errors=True)
    dataset, train_part, val_part, metrics = _train_and_split(data_dirs, work, seed, members, console,
                                                                  reuse_training)
    console.print("[bold]2/4 export and INT8[/]")
    staged, int8, calibration_images = _export_and_quantise(work, dataset, train_part, val_part, manifest, seed,
                                                             console)
    console.print("[bold]3/4 validation figures, the gate and the shortcut audit[/]")
    evaluations, audit = _measure(staged, dataset, val_part)
    console.print("[bold]4/4 record and model card[/]")
    record = _record(dataset, train_part, val_part, metrics, evaluations, int8, audit, seed, reuse_training)
    record["calibration"] = {"manifest": manifest.name, "images": calibration_images}
    record["int8_splits"] = json.loads(int8_record.read_text())["pooled"] \
        if int8_record and int8_record.exists() else None
    record["sources"] = json.loads(sources_record.read_text()) if sources_record and sources_record.exists() else None
    (staged / "release.json").write_text(json.dumps(record, indent=2) + "\n")
    (staged / "MODEL_CARD.md").write_text(model_card(record))  # also: python -m cxr_edge.export.release --card
    _install(staged, models_dir)
    console.print(f"release written to {models_dir}")
    return record


def _record(dataset: Dataset, train_part: list[Sample], val_part: list[Sample], metrics: dict, evaluations: dict,
            int8: dict, audit: dict, seed: int, reused: bool) -> dict:
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "package_version": package_version(),
        "git_commit": git_commit(), "command": "make release-model", "seed": seed, "training_reused": reused,
        "data": {"roots": [r.name for r in dataset.roots], "counts": dataset.counts(), "cells": dataset.cells(),
                 "images": len(dataset.samples), "skipped": [[str(p), r] for p, r in dataset.skipped]},
        "split": {"train_images": len(train_part), "val_images": len(val_part),
                  "train_patients": len({s.group for s in train_part}),
                  "val_patients": len({s.group for s in val_part})},
        "training": {"best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                     "members": metrics["provenance"].get("members"),
                     "train_seconds": metrics["train_seconds"], "report": metrics["validation"],
                     "config": metrics["config"], "populations": metrics["populations"]},
        "reliability": metrics["reliability"], "evaluations": evaluations, "int8": int8, "audit": audit,
        "files": dict(FILES)}


def _install(staged: Path, models_dir: Path) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    for old in [*models_dir.glob("cxr-edge-*"), models_dir / "release.json", models_dir / "MODEL_CARD.md"]:
        old.unlink(missing_ok=True)
    for item in staged.iterdir():
        if not item.name.endswith(".report.json"):
            shutil.copy2(item, models_dir / item.name)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train, export and quantise the shipped cxr-edge model.")
    parser.add_argument("--data", action="append", default=None,
                        help="labelled data, repeatable (default: the $CXR_DATA setting)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (new)")
    parser.add_argument("--models-dir", type=Path, required=True, help="where the release goes")
    parser.add_argument("--manifest", type=Path, required=True, help="calibration manifest (made if missing)")
    parser.add_argument("--int8-record", type=Path, default=None, help="multi-split INT8 record for the card")
    parser.add_argument("--sources-record", type=Path, default=None, help="leave-one-source-out record for the card")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=1,
                        help="runs of the recipe (seeds --seed, --seed + 1, ...) averaged into the shipped network")
    parser.add_argument("--reuse-training", action="store_true",
                        help="keep the checkpoints in --work; redo export, INT8 and the figures")
    parser.add_argument("--card", action="store_true",
                        help="only rewrite MODEL_CARD.md from release.json and the benchmark records given")
    args = parser.parse_args()
    if args.card:  # the figures of benchmarks that ran after the release, without retraining anything
        record = json.loads((args.models_dir / "release.json").read_text())
        for key, path, pick in (("int8_splits", args.int8_record, lambda r: r["pooled"]),
                                ("sources", args.sources_record, lambda r: r)):
            if path is not None and path.exists():
                record[key] = pick(json.loads(path.read_text()))
        (args.models_dir / "release.json").write_text(json.dumps(record, indent=2) + "\n")
        (args.models_dir / "MODEL_CARD.md").write_text(model_card(record))
        return
    build_release(resolve_data_dirs(args.data), args.work, args.models_dir, args.manifest,
                  int8_record=args.int8_record, sources_record=args.sources_record, seed=args.seed,
                  members=args.members, reuse_training=args.reuse_training)


if __name__ == "__main__":
    main()
