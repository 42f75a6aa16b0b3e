"""File to label, per transfer syntax and file format: where the time goes, before and after, and at full size.

Usage: python benchmarks/decode.py [--data DIR ...] [--runs 30] [--before REF] [--out benchmarks/decode]

One real film of the labelled data becomes, in a scratch folder (never the repository), the files an X-ray room or
a PACS sends: a 1955 x 1841 computed radiograph (15-bit, MONOCHROME1, windowed) in every transfer syntax the
runtime reads (`tests.factories.every_syntax`: pydicom, dcmtk and OpenJPH encoders), as a 16-bit PNG, a JPEG 2000
file and an HTJ2K .jph file; an 8-bit 1024 px film as PNG, baseline and progressive JPEG. Each file is classified
`--runs` times by the shipped INT8 model on its default engine, one image at a time, warm, in process; medians of
decode, preprocess and inference are reported with the decoder the runtime chose.

Two more runs of the same files in child processes, in the same session: with `CXR_EDGE_FULL_DECODE=1` (every
read at full size, for the gain of reduced reads), and with `--before REF` the runtime and shipped model of that
git commit (unpacked by `git archive` into the scratch folder), for the before/after columns.
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
import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent
CR_SHAPE = (1955, 1841)
BAR_MS = 40.0
"""The bar for a real 15-bit chest CR in any transfer syntax, file to label, warm, p50."""


def build(film: np.ndarray, folder: Path) -> dict[str, Path]:
    """The same film in every format, named by what it is."""
    import pydicom

    sys.path.insert(0, str(REPOSITORY))  # the checkout: its tests/ holds the file makers
    from tests.factories import every_syntax, jph_file

    big = cv2.resize(film, (CR_SHAPE[1], CR_SHAPE[0]), interpolation=cv2.INTER_CUBIC)
    cr = np.clip((1.0 - big) * 32767, 0, 32767).astype(np.uint16)  # 15-bit MONOCHROME1
    files = {f"DICOM CR, {pydicom.uid.UID(syntax).name}": path for syntax, path in every_syntax(
        cr, folder / "dicom", photometric="MONOCHROME1", bits_stored=15, modality="CR", WindowCenter=16000,
        WindowWidth=30000).items()}
    wide = (cr.astype(np.uint32) * 2).astype(np.uint16)
    files["PNG 16-bit, 1955 px"] = folder / "cr-16bit.png"
    cv2.imwrite(str(files["PNG 16-bit, 1955 px"]), wide)
    files["JPEG 2000 file (.jp2), 1955 px"] = folder / "cr.jp2"
    import glymur

    glymur.Jp2k(str(files["JPEG 2000 file (.jp2), 1955 px"]), data=wide, cratios=[15])
    files["HTJ2K file (.jph), 1955 px"] = jph_file(folder / "cr.jph", wide)
    small = np.uint8(np.round(cv2.resize(film, (1024, 1024 * film.shape[0] // film.shape[1]),
                                         interpolation=cv2.INTER_AREA) * 255))
    for name, suffix, params in (("PNG 8-bit, 1024 px", ".png", []),
                                 ("JPEG baseline, 1024 px", ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 93]),
                                 ("JPEG progressive, 1024 px", ".jpeg",
                                  [cv2.IMWRITE_JPEG_QUALITY, 93, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])):
        files[name] = folder / f"film{len(files)}{suffix}"
        cv2.imwrite(str(files[name]), small, params)
    return files


def measure(files: dict[str, str], runs: int) -> dict[str, dict]:
    """Medians per file; imports only what every runtime version has, so an older checkout can run it."""
    from cxr_edge.runtime.model.classifier import Classifier

    classifier = Classifier.open(None, mode="latency")
    found = {}
    for name, path in files.items():
        classifier.predict([path])  # warm: caches, the engine's threads, this file in the page cache
        stages: dict[str, list[float]] = {"decode": [], "preprocess": [], "inference": [], "total": []}
        error = None
        for _ in range(runs):
            result = classifier.predict([path])[0]
            if result.error is not None:
                error = str(result.error)
                break
            for key in stages:
                stages[key].append(result.latency_ms[key])
        found[name] = ({"error": error} if error else {key: statistics.median(v) for key, v in stages.items()}) | {
            "bytes": Path(path).stat().st_size, "engine": classifier.backend.name}
    return found


def decoders_used(files: dict[str, Path]) -> dict[str, str]:
    """The decoder the runtime picks for each DICOM file, by its --debug line."""
    import logging

    from cxr_edge.runtime.reading.images import read_image

    lines: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("cxr_edge.runtime.reading.dicom_image")
    handler, level = Catch(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    used: dict[str, str] = {}
    try:
        for name, path in files.items():
            lines.clear()
            read_image(path, min_size=(224, 224))
            said = [line.split(": ", 1)[1].split(" decoded ")[0] for line in lines if " decoded " in line]
            used[name] = said[-1] if said else "-"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return used


def before_checkout(ref: str, scratch: Path) -> Path:
    """The package of git commit `ref`, importable as cxr_edge from the returned folder."""
    tree = scratch / "before-tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", ref], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    package = scratch / "before" / "cxr_edge"
    shutil.copytree(tree / "cxr_edge", package)
    for room in ("runtime", "export"):
        (package / room).symlink_to(tree / room)
    return package.parent


def child(manifest: Path, runs: int, env: dict[str, str]) -> dict[str, dict]:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", str(manifest), "--runs", str(runs)]
    result = subprocess.run(command,
                            capture_output=True, text=True, env=os.environ | env, cwd=manifest.parent)
    if result.returncode != 0:
        raise SystemExit(f"measuring in a child process failed: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(record: dict) -> str:
    before = record.get("before_ref")
    lines = ["# File to label, per transfer syntax and format", "",
             f"Measured {record['created']} on {record['machine']['cpu']} ({', '.join(record['machine']['flags'])}); "
             f"`python benchmarks/decode.py{' --before ' + before if before else ''}`; shipped INT8 model on its "
             f"default engine ({record['engine']}), medians of {record['runs']} runs per file, one image at a time, "
             f"warm, in process. Full size: the same files with `CXR_EDGE_FULL_DECODE=1`."
             + (f" Before: the runtime and model of commit `{before}`, same files, same session." if before else ""),
             "", "| file | KB | decoder | decode ms | preprocess ms | inference ms | total ms | full size ms |"
             + (" before ms |" if before else ""),
             "| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if before else "")]
    for name, row in record["formats"].items():
        full = record["full_size"][name].get("total")
        cells = [name, f"{row['bytes'] / 1024:.0f}", record["decoders"].get(name, "-"), f"{row['decode']:.1f}",
                 f"{row['preprocess']:.2f}", f"{row['inference']:.2f}", f"**{row['total']:.1f}**",
                 f"{full:.1f}" if full else "-"]
        if before:
            old = record["before"].get(name, {})
            cells.append(f"{old['total']:.1f}" if "total" in old else old.get("error", "-")[:60])
        lines.append("| " + " | ".join(cells) + " |")
    worst = max((row["total"], name) for name, row in record["formats"].items() if name.startswith("DICOM CR"))
    lines += ["", f"Slowest DICOM transfer syntax: {worst[1]}, {worst[0]:.1f} ms file to label "
              f"({'within' if worst[0] <= BAR_MS else 'over'} the {BAR_MS:.0f} ms bar). Decoders per syntax: "
              "`decoders.md`; reduced reads against full-size reads on real films: `reduced.md`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--before", default=None, help="a git commit to measure beside this checkout")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "decode")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(json.loads(args.measure.read_text()), args.runs)))
        return
    from cxr_edge.runtime.evaluation.bench import machine_info, versions
    from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
    from cxr_edge.runtime.reading.images import load_image

    film = load_image(next(s.path for s in scan_dataset(resolve_data_dirs(args.data)).samples
                           if s.source == "hannover-mhh"))
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        files = build(film, scratch)
        manifest = scratch / "files.json"
        manifest.write_text(json.dumps({name: str(path) for name, path in files.items()}))
        formats = measure({name: str(path) for name, path in files.items()}, args.runs)
        record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
                  "versions": versions(), "runs": args.runs, "engine": next(iter(formats.values()))["engine"],
                  "formats": formats, "decoders": decoders_used(files),
                  "full_size": child(manifest, args.runs, {"CXR_EDGE_FULL_DECODE": "1"})}
        if args.before:
            record["before_ref"] = args.before
            package = before_checkout(args.before, scratch)
            record["before"] = child(manifest, args.runs, {"PYTHONPATH": str(package)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "decode.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
