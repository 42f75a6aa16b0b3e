"""How far reading at reduced size moves the shipped model's output, on real films.

Usage: python benchmarks/reduced_reads.py [--data DIR ...] [--per-source 20] [--out benchmarks/decode]

Real films of every source of the labelled data become, in a scratch folder (never the repository), 15-bit DICOM
at a detector's size (2048 pixels on the long side) under the value mappings a PACS sends (no window, a mild
window, a narrow window that clips a third of the film, a sigmoid VOI function, a VOI LUT table, MONOCHROME1)
and 16-bit PNG. Each file is classified twice by the shipped INT8 model on ONNX Runtime: read at reduced size
(early area reduction before the value mapping, `cxr_edge.runtime.reading.shrink`) and at full size
(`CXR_EDGE_FULL_DECODE=1`). The record holds the difference of the image the network sees, checked against
`READ_TOLERANCE` (`cxr_edge.runtime.model.contract`), and the change of the probabilities (median, 99th
percentile, largest, the share of films whose label or finding changed) beside the same figures for INT8 against
FP32 on the same films, the model's own numerical noise, and the image difference were reads reduced down to the
input size itself (for windowed DICOM, which is otherwise reduced only to twice it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset

from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.contract import READ_TOLERANCE
from cxr_edge.runtime.model.preprocess import load_for_contract, resize
from cxr_edge.runtime.reading import jpeg2000, shrink
from cxr_edge.runtime.reading.images import load_image
from cxr_edge.runtime.reading.shrink import FULL_DECODE_ENV

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its tests/ holds the DICOM factory
from tests.factories import dicom_dataset  # noqa: E402

TOP = 32767
DETECTOR_SIDE = 2048


def _window(stored: np.ndarray, narrow: bool) -> dict[str, object]:
    low, high = np.percentile(stored, (30, 95) if narrow else (0.5, 99.5))
    return {"WindowCenter": int((low + high) / 2), "WindowWidth": int(max(high - low, 2))}


def _voi_lut(stored: np.ndarray) -> dict[str, object]:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    curve = np.sqrt(np.linspace(0, 1, 4096)) * 65535  # a gamma-like table, as consoles write
    item.add_new(0x00283006, "US", curve.astype(np.uint16).tolist())  # LUT Data, 16-bit entries
    return {"VOILUTSequence": [item]}


VARIANTS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, str, dict[str, object]]]] = {
    "DICOM, no window": lambda s: (s, "MONOCHROME2", {}),
    "DICOM, mild window": lambda s: (s, "MONOCHROME2", _window(s, narrow=False)),
    "DICOM, narrow window": lambda s: (s, "MONOCHROME2", _window(s, narrow=True)),
    "DICOM, sigmoid window": lambda s: (s, "MONOCHROME2", _window(s, narrow=False) | {"VOILUTFunction": "SIGMOID"}),
    "DICOM, VOI LUT table": lambda s: ((s >> 3).astype(np.uint16), "MONOCHROME2", _voi_lut(s)),
    "DICOM, MONOCHROME1 window": lambda s: ((TOP - s).astype(np.uint16), "MONOCHROME1",
                                            _window((TOP - s).astype(np.uint16), narrow=False)),
}


def films(roots: list[Path], per_source: int) -> list[Path]:
    """The first `per_source` films of each source (sorted by name: the same films every run)."""
    by_source: dict[str, list[Path]] = {}
    for sample in sorted(scan_dataset(roots).samples, key=lambda s: str(s.path)):
        by_source.setdefault(sample.source, []).append(sample.path)
    return [path for paths in by_source.values() for path in paths[:per_source]]


def write_files(paths: list[Path], folder: Path) -> dict[str, list[Path]]:
    """Every film in every variant, 15 bits, at a detector's size: the shared films are downsampled for
    distribution, so each is brought back (cubic) to `DETECTOR_SIDE` pixels on its long side."""
    made: dict[str, list[Path]] = {name: [] for name in [*VARIANTS, "PNG, 16-bit"]}
    for index, path in enumerate(paths):
        film = load_image(path)
        film = cv2.resize(film, None, fx=DETECTOR_SIDE / max(film.shape), fy=DETECTOR_SIDE / max(film.shape),
                          interpolation=cv2.INTER_CUBIC)
        stored = np.rint(np.clip(film, 0, 1) * TOP).astype(np.uint16)
        for name, variant in VARIANTS.items():
            pixels, photometric, attributes = variant(stored)
            bits = 12 if "LUT" in name else 15
            out = folder / f"{index:04d}-{len(made[name])}-{abs(hash(name)) % 997}.dcm"
            dicom_dataset(pixels, photometric=photometric, bits_stored=bits, modality="CR",
                          **attributes).save_as(out, enforce_file_format=True)
            made[name].append(out)
        png = folder / f"{index:04d}.png"
        cv2.imwrite(str(png), (stored.astype(np.uint32) * 2).astype(np.uint16))
        made["PNG, 16-bit"].append(png)
    return made


def _reads(full: bool) -> None:
    os.environ[FULL_DECODE_ENV] = "1" if full else "0"
    jpeg2000.available.cache_clear()


def images(classifier: Classifier, paths: list[Path], full: bool) -> np.ndarray:
    """What the network sees of each file before intensity standardisation (the contract's resize of the read)."""
    _reads(full)
    return np.stack([resize(load_for_contract(path, classifier.contract).pixels, classifier.contract)
                     for path in paths])


def probabilities(classifier: Classifier, paths: list[Path], full: bool) -> np.ndarray:
    _reads(full)
    results = classifier.predict(paths)
    bad = [r.error for r in results if r.error]
    assert not bad, bad[:3]
    names = classifier.contract.class_names
    return np.array([[r.probabilities[name] for name in names] for r in results])


def at_input_size(classifier: Classifier, paths: list[Path], full: np.ndarray) -> float:
    """The largest film's image difference were windowed DICOM reduced down to the input size itself: the figure
    `WINDOW_OVERSAMPLING` is chosen by."""
    chosen = shrink.WINDOW_OVERSAMPLING
    shrink.WINDOW_OVERSAMPLING = 1
    try:
        return float(np.abs(images(classifier, paths, False) - full).mean(axis=(1, 2)).max())
    finally:
        shrink.WINDOW_OVERSAMPLING = chosen


def compare(reduced: np.ndarray, full: np.ndarray, classifier: Classifier) -> dict[str, float]:
    change = np.abs(reduced - full).max(axis=1)
    finding = classifier.contract.finding_of
    names = classifier.contract.class_names
    finding_flips = [finding(names[int(a)]) != finding(names[int(b)])
                     for a, b in zip(reduced.argmax(1), full.argmax(1), strict=True)]
    return {"films": len(change), "max": float(change.max()), "p99": float(np.percentile(change, 99)),
            "median": float(np.median(change)), "label_changed": float((reduced.argmax(1) != full.argmax(1)).mean()),
            "finding_changed": float(np.mean(finding_flips))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--per-source", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "decode")
    args = parser.parse_args()
    paths = films(resolve_data_dirs(args.data), args.per_source)
    int8 = Classifier.open(None, backend="ort", threads=2)
    fp32 = Classifier.open(Path(int8.path).with_name("cxr-edge-fp32.onnx"), backend="ort", threads=2)
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        made = write_files(paths, Path(scratch))
        for name, files in made.items():
            rows[name] = compare(probabilities(int8, files, False), probabilities(int8, files, True), int8)
            full = images(int8, files, True)
            difference = np.abs(images(int8, files, False) - full).mean(axis=(1, 2))
            rows[name] |= {"image_max": float(difference.max()), "image_median": float(np.median(difference)),
                           "image_max_at_input_size": at_input_size(int8, files, full)}
            print(name, json.dumps(rows[name]))
        mild = made["DICOM, mild window"]
        rows["INT8 against FP32 (full-size reads)"] = compare(probabilities(int8, mild, True),
                                                              probabilities(fp32, mild, True), int8)
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "per_source": args.per_source, "read_tolerance": READ_TOLERANCE, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reduced.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Reduced reads against full-size reads", "",
             f"Measured {record['created']} on {record['machine']['cpu']}; `python benchmarks/reduced_reads.py`; "
             f"shipped INT8 model on ONNX Runtime; {len(paths)} real films ({args.per_source} per source) at a "
             f"detector's size ({DETECTOR_SIDE} px long side, cubic) as 15-bit files, each read at reduced size and "
             f"with `{FULL_DECODE_ENV}=1`. Image: the "
             f"mean absolute difference of the network's image (input size, before standardisation), largest and "
             f"median film, against `READ_TOLERANCE` = {READ_TOLERANCE}. Probability: the largest change of any "
             f"class probability per film; the last row is INT8 against FP32 on the same films, the model's own "
             f"numerical noise. Windowed DICOM stops at `WINDOW_OVERSAMPLING` = {shrink.WINDOW_OVERSAMPLING} times "
             f"the input size; the last image column is the largest film's difference were it reduced to the input "
             f"size itself.", "",
             "| file | films | image, largest | image, median | within tolerance | probability, median | p99 | max | "
             "label changed | finding changed | image, largest, reduced to the input size |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        image = row.get("image_max")
        cells = ("-", "-", "-") if image is None else (
            f"{image:.4f}", f"{row['image_median']:.4f}", "yes" if image <= READ_TOLERANCE else "**no**")
        lines.append(f"| {name} | {row['films']} | {' | '.join(cells)} | {row['median']:.4f} | "
                     f"{row['p99']:.3f} | {row['max']:.3f} | {row['label_changed']:.1%} | "
                     f"{row['finding_changed']:.1%} | {_cell(row.get('image_max_at_input_size'))} |")
    (args.out / "reduced.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cell(image_difference: float | None) -> str:
    if image_difference is None:
        return "-"
    return f"{image_difference:.4f}" + ("" if image_difference <= READ_TOLERANCE else " (**over**)")


if __name__ == "__main__":
    main()
