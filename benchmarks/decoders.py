"""Every decoder candidate on every transfer syntax: the measurement behind `cxr_edge.runtime.reading.codecs.ORDER`.

Usage: python benchmarks/decoders.py [--data DIR ...] [--runs 15] [--out benchmarks/decode]

One real film of the labelled data becomes, in a scratch folder (never the repository), a 1955 x 1841 computed
radiograph (15-bit) in every transfer syntax the runtime reads, written by real encoders (pydicom, dcmtk, OpenJPH).
Each installed candidate decodes the first frame `--runs` times after one warm-up, one thread, in process; the
median is reported with the largest difference from pydicom's own decode (0: the same stored values; reduced
decoders give fewer pixels and are compared with the block mean of pydicom's decode, in stored values). The
decoder the runtime uses is the first of the syntax's `ORDER` that is installed; the table marks it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder

from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
from cxr_edge.runtime.reading import codecs
from cxr_edge.runtime.reading.images import load_image
from cxr_edge.runtime.reading.shrink import shrink

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its tests/ holds the file makers
from tests.factories import every_syntax  # noqa: E402

CR_SHAPE = (1955, 1841)


def the_film(roots: list[Path]) -> np.ndarray:
    """A real adult COVID-19 film at detector size, as a CR stores it: 15-bit MONOCHROME1 (bone and the
    collimated border, white on screen, near stored zero)."""
    film = load_image(next(s.path for s in scan_dataset(roots).samples if s.source == "ieee8023-covid"))
    big = cv2.resize(film, (CR_SHAPE[1], CR_SHAPE[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip((1.0 - big) * 32767, 0, 32767).astype(np.uint16)


def _median_ms(run, runs: int) -> float:
    run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure_syntax(path: Path, runs: int) -> dict[str, dict]:
    """Every candidate for this file's syntax: median ms, difference from pydicom, output size."""
    ds = pydicom.dcmread(path)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    data = ds.PixelData if syntax in codecs.NATIVE else next(generate_frames(ds.PixelData, number_of_frames=1))
    frame = codecs.Frame(ds, syntax, data, ds.Rows, ds.Columns, ds.BitsStored, (224, 224))
    reference = ds.pixel_array.astype(np.int64)
    block_mean = shrink(reference, (224, 224))
    found = {codecs.PYDICOM.name: {"ms": _median_ms(lambda: get_decoder(syntax).as_array(ds)[0], runs),
                                   "difference": 0, "shape": list(reference.shape)}}
    for decoder in codecs.candidates(syntax):
        if not codecs.installed(decoder.module):
            found[decoder.name] = {"missing": True}
            continue
        try:
            out = decoder.run(frame)
        except Exception as exc:
            found[decoder.name] = {"error": str(exc).strip().splitlines()[-1][:100]}
            continue
        if out is None:
            found[decoder.name] = {"error": "does not cover this image"}
            continue
        difference = int(np.abs(out.astype(np.int64) - reference).max()) if out.shape == reference.shape else None
        found[decoder.name] = {"ms": _median_ms(lambda d=decoder: d.run(frame), runs), "difference": difference,
                               "shape": list(out.shape), "out_of_range": int((out >= 2 ** ds.BitsStored).sum())}
        if out.shape == block_mean.shape:  # a reduced decode: how far from the block mean of the full image
            found[decoder.name]["block_mean_difference"] = float(np.abs(out - block_mean).mean())
            # far above the stored range, beyond any ringing of the wavelet at an edge: a value below zero wrapped
            found[decoder.name]["wrapped"] = int((out >= 1.5 * 2 ** ds.BitsStored).sum())
    return found


def markdown(record: dict) -> str:
    lines = ["# Decoder candidates per transfer syntax", "",
             f"Measured {record['created']} on {record['machine']['cpu']} ({', '.join(record['machine']['flags'])}); "
             f"`python benchmarks/decoders.py`; a real film as a {CR_SHAPE[1]} x {CR_SHAPE[0]} 15-bit CR, first frame "
             f"decoded in process, median of {record['runs']} runs after a warm-up. Difference: largest difference "
             "from pydicom's stored values (reduced decoders: their output size and mean distance from the block mean "
             "of pydicom's decode). **In use**: the runtime's choice (`codecs.ORDER`, then pydicom).", "",
             "| transfer syntax | decoder | ms | difference | in use |", "| --- | --- | --- | --- | --- |"]
    for syntax, row in record["syntaxes"].items():
        chosen = record["chosen"][syntax]
        for name, result in sorted(row["decoders"].items(), key=lambda item: item[1].get("ms", 1e9)):
            if "ms" not in result:
                note = "not installed" if result.get("missing") else result["error"].splitlines()[-1].strip()
                lines.append(f"| {row['name']} | {name} | - | {note} | |")
                continue
            difference = str(result["difference"])
            if result["difference"] is None:
                difference = (f"{'x'.join(map(str, result['shape']))}, {result['block_mean_difference']:.0f} from the "
                              "block mean on average")
            if result.get("wrapped"):
                difference += f", {result['wrapped']} dark pixels wrapped to white"
            lines.append(f"| {row['name']} | {name} | {result['ms']:.1f} | {difference} | "
                         f"{'**in use**' if name == chosen else ''} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "decode")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    stored = the_film(resolve_data_dirs(args.data))
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "runs": args.runs, "syntaxes": {}, "chosen": {}}
    with tempfile.TemporaryDirectory() as scratch:
        files = every_syntax(stored, Path(scratch), bits_stored=15, modality="CR", WindowCenter=16000,
                             WindowWidth=30000)
        for syntax, path in files.items():
            record["syntaxes"][syntax] = {"name": pydicom.uid.UID(syntax).name,
                                          "decoders": measure_syntax(path, args.runs)}
            frame_ds = pydicom.dcmread(path)
            data = (frame_ds.PixelData if syntax in codecs.NATIVE
                    else next(generate_frames(frame_ds.PixelData, number_of_frames=1)))
            record["chosen"][syntax] = codecs.decode_stored(codecs.Frame(
                frame_ds, syntax, data, frame_ds.Rows, frame_ds.Columns, frame_ds.BitsStored, (224, 224)), syntax)[1]
            print(record["syntaxes"][syntax]["name"], "->", record["chosen"][syntax], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decoders.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "decoders.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
