"""File to label, per format: where the time goes for every image format the runtime reads.

Usage: python benchmarks/decode.py [--data DIR ...] [--runs 30] [--out benchmarks/decode]

One real film of the labelled data becomes, in a scratch folder (never the repository), the files an X-ray room
or a PACS sends: a 1955 x 1841 computed radiograph (15-bit, MONOCHROME1) as uncompressed, RLE, JPEG lossless,
JPEG-LS, JPEG 2000 lossless and lossy DICOM and as a 16-bit PNG and a JPEG 2000 file; an 8-bit 1024 px film as
PNG, baseline and progressive JPEG and JPEG baseline DICOM. JPEG lossless and JPEG-LS are made by dcmtk (when
installed). Each file is classified `--runs` times by the shipped INT8 model on its default engine; the medians
of decode, preprocess and inference are reported, and for JPEG 2000 the same files decoded in full
(CXR_EDGE_FULL_DECODE=1, in a child process) for the ratio. Reduced decoding exists for JPEG (DCT scaling) and
JPEG 2000 (resolution levels); JPEG lossless, JPEG-LS, RLE, PNG and uncompressed data have no lower-resolution
representation, so they are decoded in full.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import cv2
import glymur
import numpy as np
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.reading.images import load_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its tests/ holds the DICOM factory
from tests.factories import dicom_dataset, dicom_in_syntax  # noqa: E402

CR_SHAPE = (1955, 1841)


def build(film: np.ndarray, folder: Path) -> dict[str, Path]:
    """The same film in every format, named by what it is."""
    big = cv2.resize(film, (CR_SHAPE[1], CR_SHAPE[0]), interpolation=cv2.INTER_CUBIC)
    cr = np.clip((1.0 - big) * 32767, 0, 32767).astype(np.uint16)  # 15-bit MONOCHROME1
    small = np.uint8(np.round(cv2.resize(film, (1024, 1024 * film.shape[0] // film.shape[1]),
                                         interpolation=cv2.INTER_AREA) * 255))
    files: dict[str, Path] = {}

    def cr_dicom(name: str, syntax: str, **extra: object) -> None:
        ds = dicom_dataset(cr, photometric="MONOCHROME1", bits_stored=15, modality="CR",
                           WindowCenter=16000, WindowWidth=30000)
        if syntax != "uncompressed":
            ds.compress(syntax, cr, **extra)
        files[name] = folder / f"{name}.dcm"
        ds.save_as(files[name], enforce_file_format=True)

    cr_dicom("DICOM CR 15-bit, uncompressed", "uncompressed")
    cr_dicom("DICOM CR 15-bit, RLE", RLELossless)
    cr_dicom("DICOM CR 15-bit, JPEG 2000 lossless", JPEG2000Lossless)
    cr_dicom("DICOM CR 15-bit, JPEG 2000 lossy", JPEG2000, j2k_cr=[15])
    for name, tool, option in (("DICOM CR 15-bit, JPEG lossless", "dcmcjpeg", "+e1"),
                               ("DICOM CR 15-bit, JPEG-LS lossless", "dcmcjpls", "+el")):
        if shutil.which(tool):
            files[name] = folder / f"{name}.dcm"
            subprocess.run([tool, option, str(files["DICOM CR 15-bit, uncompressed"]), str(files[name])], check=True)
    png16 = folder / "cr-16bit.png"
    cv2.imwrite(str(png16), (cr.astype(np.uint32) * 2).astype(np.uint16))
    files["PNG 16-bit, 1955 px"] = png16
    name = "JPEG 2000 file (.jp2), 1955 px"
    files[name] = folder / f"{name}.jp2"
    glymur.Jp2k(str(files[name]), data=(cr.astype(np.uint32) * 2).astype(np.uint16), cratios=[15])
    for name, suffix, params in (("PNG 8-bit, 1024 px", ".png", []),
                                 ("JPEG baseline, 1024 px", ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 93]),
                                 ("JPEG progressive, 1024 px", ".jpeg",
                                  [cv2.IMWRITE_JPEG_QUALITY, 93, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])):
        files[name] = folder / f"film{len(files)}{suffix}"
        cv2.imwrite(str(files[name]), small, params)
    files["DICOM 8-bit, JPEG baseline, 1024 px"] = folder / "jpeg.dcm"
    dicom_in_syntax(small, JPEGBaseline8Bit, modality="CR").save_as(files["DICOM 8-bit, JPEG baseline, 1024 px"],
                                                                    enforce_file_format=True)
    return files


def measure(files: dict[str, Path], runs: int) -> dict[str, dict]:
    classifier = Classifier.open(None, mode="latency")
    found = {}
    for name, path in files.items():
        classifier.predict([path])  # warm: caches, the engine's threads, this file in the page cache
        stages: dict[str, list[float]] = {"decode": [], "preprocess": [], "inference": [], "total": []}
        for _ in range(runs):
            result = classifier.predict([path])[0]
            assert result.error is None, (name, result.error)
            for key in stages:
                stages[key].append(result.latency_ms[key])
        found[name] = {key: statistics.median(values) for key, values in stages.items()} | {
            "bytes": path.stat().st_size, "engine": classifier.backend.name}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "decode")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args()
    if args.measure is not None:
        files = {path.stem: path for path in sorted(args.measure.glob("*JPEG 2000*"))}
        print(json.dumps(measure(files, args.runs)))
        return
    roots = resolve_data_dirs(args.data)
    film = load_image(next(s.path for s in scan_dataset(roots).samples if s.source == "hannover-mhh"))
    with tempfile.TemporaryDirectory() as scratch:
        files = build(film, Path(scratch))
        reduced = measure(files, args.runs)
        child = subprocess.run([sys.executable, __file__, "--measure", scratch, "--runs", str(args.runs)],
                               capture_output=True, text=True, check=True,
                               env=os.environ | {"CXR_EDGE_FULL_DECODE": "1"})
        full = {name: row for name, row in json.loads(child.stdout).items()}
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "runs": args.runs, "formats": reduced,
              "jpeg2000_full_decode": {name: full[Path(files[name]).stem] for name in files if "JPEG 2000" in name}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# File to label, per format", "", f"Measured {record['created']} on {record['machine']['cpu']} "
             f"({', '.join(record['machine']['flags'])}); `python benchmarks/decode.py`; shipped INT8 model on "
             f"its default engine, medians of {args.runs} runs per file, one image at a time.", "",
             "| file | size KB | decode ms | preprocess ms | inference ms | total ms |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, row in reduced.items():
        lines.append(f"| {name} | {row['bytes'] / 1024:.0f} | {row['decode']:.1f} | {row['preprocess']:.2f} | "
                     f"{row['inference']:.2f} | {row['total']:.1f} |")
    lines += ["", "JPEG 2000 decoded in full (`CXR_EDGE_FULL_DECODE=1`, same files, same run):", "",
              "| file | full decode ms | total ms | reduced total / full total |", "| --- | --- | --- | --- |"]
    for name, row in record["jpeg2000_full_decode"].items():
        lines.append(f"| {name} | {row['decode']:.1f} | {row['total']:.1f} | "
                     f"{reduced[name]['total'] / row['total']:.2f} |")
    lines += ["", "JPEG (baseline and progressive) decodes at 1/2, 1/4 or 1/8 scale in the DCT domain and JPEG 2000 at "
              "a lower resolution level, each never below the model's input size. JPEG lossless, JPEG-LS, RLE, "
              "PNG and uncompressed data hold no lower-resolution version of the image and are decoded in full."]
    (args.out / "decode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
