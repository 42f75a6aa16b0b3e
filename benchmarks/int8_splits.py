"""INT8 accuracy over several validation splits: one 63-image split resolves only 1.6 points, five resolve more.

Usage: python benchmarks/int8_splits.py [--data DIR] [--splits 0 1 2 3 4] [--work runs/int8-splits]
                                        [--out benchmarks/int8]

For each split seed: the default `cxr-edge train` recipe on a stratified 80/20 split, export to ONNX, INT8 for
ONNX Runtime and for OpenVINO (the release recipes, calibrated on that split's training part), and FP32 vs INT8
on the held-out part. Trained FP32 models stay in --work, so a change of quantisation recipe is re-judged in
minutes without training again (delete --work after changing the training recipe). Pooling the held-out images
of all splits gives the accuracy change and the agreement of each engine with a resolution of about 0.3 points.
Writes int8.json and int8.md into --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from cxr_edge.export.config import TrainConfig
from cxr_edge.export.data import stratified_split
from cxr_edge.export.quantize import quantize
from cxr_edge.export.to_onnx import export_onnx
from cxr_edge.export.train import train
from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset

ENGINES = {"ort": "int8.onnx", "openvino": "int8.xml"}


def run_split(data_dir: list[Path], split_seed: int, work: Path, console: Console) -> dict:
    """Train and export on one split (unless `work` already holds that model), quantise, and count FP32 and INT8
    results on its held-out part."""
    dataset = scan_dataset(data_dir)
    train_part, val_part = stratified_split(dataset.samples, 0.2, split_seed)
    fp32 = work / "model.onnx"
    if not fp32.exists():
        shutil.rmtree(work, ignore_errors=True)
        train(TrainConfig(seed=0, split_seed=split_seed), data_dir, work, console=console, progress=False)
        export_onnx(work / "checkpoint.pt", fp32, check_images=[s.path for s in val_part[:4]])
    metrics = json.loads((work / "metrics.json").read_text())
    record = {"split_seed": split_seed, "val_images": len(val_part), "best_epoch": metrics["best_epoch"],
              "fp32_macro_f1": metrics["validation"]["macro_f1"], "engines": {}}
    for backend, name in ENGINES.items():
        (work / name).unlink(missing_ok=True)
        (work / name).with_suffix(".bin").unlink(missing_ok=True)
        report = quantize(fp32, work / name, calibration=[s.path for s in train_part], backend=backend,
                          labelled=val_part)
        c = report.comparison
        record["engines"][backend] = {
            "fp32_accuracy": c["fp32"]["accuracy"], "int8_accuracy": c["int8"]["accuracy"],
            "agreement": c["agreement"], "speedup": c["speedup"],
            "fp32_correct": round(c["fp32"]["accuracy"] * len(val_part)),
            "int8_correct": round(c["int8"]["accuracy"] * len(val_part)),
            "agreeing": round(c["agreement"] * len(val_part)),
        }
        console.print(f"split {split_seed} {backend}: accuracy {c['fp32']['accuracy']:.3f} -> "
                      f"{c['int8']['accuracy']:.3f}, agreement {c['agreement']:.3f}")
    return record


def pooled(splits: list[dict]) -> dict:
    """Every held-out image of every split counted once per split."""
    total = sum(s["val_images"] for s in splits)
    out = {"images": total}
    for backend in ENGINES:
        fp32 = sum(s["engines"][backend]["fp32_correct"] for s in splits) / total
        int8 = sum(s["engines"][backend]["int8_correct"] for s in splits) / total
        agree = sum(s["engines"][backend]["agreeing"] for s in splits) / total
        out[backend] = {"fp32_accuracy": fp32, "int8_accuracy": int8, "accuracy_change_points": 100 * (int8 - fp32),
                        "agreement": agree}
    return out


def markdown(record: dict) -> str:
    machine = record["machine"]
    lines = [f"Default recipe, release INT8 recipes, 80/20 splits with seeds "
             f"{', '.join(str(s['split_seed']) for s in record['splits'])}, on {machine['cpu']}, "
             f"{machine['cores']} cores; measured {record['created']}.", "",
             "| split | images | engine | FP32 accuracy | INT8 accuracy | change | agreement |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in record["splits"]:
        for backend, e in s["engines"].items():
            lines.append(f"| {s['split_seed']} | {s['val_images']} | {backend} | {e['fp32_accuracy']:.3f} | "
                         f"{e['int8_accuracy']:.3f} | {100 * (e['int8_accuracy'] - e['fp32_accuracy']):+.1f} | "
                         f"{e['agreement']:.1%} |")
    p = record["pooled"]
    for backend in ENGINES:
        e = p[backend]
        lines.append(f"| **all** | {p['images']} | {backend} | {e['fp32_accuracy']:.3f} | {e['int8_accuracy']:.3f} | "
                     f"{e['accuracy_change_points']:+.1f} | {e['agreement']:.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="class-folder dataset (default: $CXR_DATA or the shared set)")
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent.parent / "runs" / "int8-splits",
                        help="keeps one trained FP32 model per split")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "int8")
    args = parser.parse_args()
    console = Console(stderr=True)
    data_dir = resolve_data_dirs(args.data)
    splits = [run_split(data_dir, seed, args.work / f"split{seed}", console) for seed in args.splits]
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "splits": splits, "pooled": pooled(splits)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "int8.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
