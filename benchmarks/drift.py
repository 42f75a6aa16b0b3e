"""Drift monitoring on streams built from the shared sets: false alarms, detection delay, cost per image.

Usage: python benchmarks/drift.py [--data DIR ...] [--shuffles 40] [--out benchmarks/drift]

Every labelled film is classified once by the shipped INT8 model (`Classifier.predict`, the records `predict`
writes), and the same hospital's films are also written, in a scratch folder, processed as another room would
(gamma 0.7, a blur, detector noise, half the resolution) and classified too. Streams are then drawn from these
records: a baseline of the first `DriftConfig.baseline` results of one hospital (NIH ChestX-ray14, normals and
pneumonias), then

- more of the same hospital's films (no change): every alarm is a false alarm, counted per 10,000 images over
  `--shuffles` shuffles;
- a switch, after 100 more of the same, to another hospital's films (RSNA's re-processed NIH films, Hannover's
  COVID-19 films, the paediatric hospital) or to the same films processed differently: the delay of the first
  alarm after the switch, and any alarm before it;
- a change of case mix at the same hospital (15 % pneumonias, then a wave of 85 %; the same films can be drawn in
  both parts): reported, never an alarm.

Cost: the monitoring fields of a record (`facts`, timed on real images) and one `DriftMonitor.add`.
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

from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.facts import image_facts, model_facts
from cxr_edge.runtime.monitoring.drift import DriftConfig, DriftMonitor, drift_report
from cxr_edge.runtime.reading.images import load_image

HOME = "nih-cxr14"
OTHERS = {"RSNA (NIH films processed again)": "rsna-nih", "Hannover (COVID-19)": "hannover-mhh",
          "paediatric hospital": "kermany"}
PROCESSING = {
    "gamma 0.7": lambda f: np.power(f, 0.7),
    "blur": lambda f: cv2.GaussianBlur(f, (0, 0), 2.0),
    "noise 3 %": lambda f: np.clip(f + np.random.default_rng(0).normal(0, 0.03, f.shape), 0, 1),
    "half resolution": lambda f: cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA),
}


def records_by_group(roots: list[Path], scratch: Path) -> dict[str, list[dict]]:
    """Every film's record, by source; the home hospital's films also processed differently."""
    classifier = Classifier.open(None, backend="ort")
    samples = scan_dataset(roots).samples
    groups: dict[str, list[dict]] = {}
    for source in {HOME, *OTHERS.values()}:
        paths = [s.path for s in samples if s.source == source]
        groups[source] = [p.to_record() for p in classifier.predict(paths) if p.error is None]
    home = [s for s in samples if s.source == HOME]
    groups["home normals"] = [r for r, s in zip(groups[HOME], home, strict=False) if s.label == "normal"]
    groups["home pneumonias"] = [r for r, s in zip(groups[HOME], home, strict=False) if s.label != "normal"]
    for name, change in PROCESSING.items():
        folder = scratch / name.replace(" ", "-").replace("%", "pc")
        folder.mkdir()
        paths = []
        for sample in home:
            paths.append(folder / f"{sample.path.stem}.png")
            changed = np.clip(change(load_image(sample.path)), 0, 1)
            cv2.imwrite(str(paths[-1]), np.rint(changed * 255).astype(np.uint8))
        groups[name] = [p.to_record() for p in classifier.predict(paths) if p.error is None]
    return groups


def _shuffled(records: list[dict], seed: int) -> list[dict]:
    order = np.random.default_rng(seed).permutation(len(records))
    return [records[i] for i in order]


def false_alarms(home: list[dict], shuffles: int, config: DriftConfig) -> dict:
    """Streams of the home hospital only: alarms per 10,000 monitored images."""
    alarms, monitored = 0, 0
    for seed in range(shuffles):
        stream = _shuffled(home, seed)
        report = drift_report(stream, DriftMonitor(config))
        alarms += len(report["alarms"])
        monitored += len(stream) - config.baseline
    return {"streams": shuffles, "monitored": monitored, "alarms": alarms,
            "per_10000": round(alarms * 10_000 / monitored, 2)}


def switch(home: list[dict], other: list[dict], shuffles: int, config: DriftConfig, after: int = 100) -> dict:
    """The home stream, then another group's films: delays of the first alarm after the switch."""
    delays, early, missed = [], 0, 0
    for seed in range(shuffles):
        first = _shuffled(home, seed)[:config.baseline + after]
        stream = first + _shuffled(other, seed + 1000)[:200]
        report = drift_report(stream, DriftMonitor(config))
        before = [a for a in report["alarms"] if a["index"] < len(first)]
        later = [a["index"] - len(first) for a in report["alarms"] if a["index"] >= len(first)]
        early += bool(before)
        if later:
            delays.append(min(later) + 1)
        else:
            missed += 1
    return {"streams": shuffles, "median_delay": statistics.median(delays) if delays else None,
            "worst_delay": max(delays) if delays else None, "missed": missed, "alarm_before_switch": early,
            "signals": None}


def case_mix(normals: list[dict], pneumonias: list[dict], shuffles: int, config: DriftConfig) -> dict:
    """A season at one hospital: a baseline with few pneumonias (15 %), then a wave of them (85 %)."""
    alarms = 0
    shares = []
    for seed in range(shuffles):
        rng = np.random.default_rng(seed)
        calm, wave = _mix(normals, pneumonias, config.baseline + 50, 0.15, rng), _mix(normals, pneumonias, 150,
                                                                                   0.85, rng)
        stream = calm + wave
        report = drift_report(stream, DriftMonitor(config))
        alarms += len(report["alarms"])
        shares.append(report["windows"][-1]["case_mix"].get("pneumonia", {}).get("window", 0.0))
    return {"streams": shuffles, "alarms": alarms, "pneumonia_share_last_window": statistics.median(shares)}


def _mix(normals: list[dict], pneumonias: list[dict], count: int, share: float,
         rng: np.random.Generator) -> list[dict]:
    """`count` films of which a `share` are pneumonias, drawn without regard to order."""
    sick = int(round(count * share))
    picked = [normals[i] for i in rng.choice(len(normals), count - sick, replace=False)]
    picked += [pneumonias[i] for i in rng.choice(len(pneumonias), sick, replace=False)]
    return [picked[i] for i in rng.permutation(len(picked))]


def costs(roots: list[Path], home: list[dict], config: DriftConfig) -> dict:
    """Per image: the monitoring fields (on real resized images) and one online update."""
    sample = next(s.path for s in scan_dataset(roots).samples if s.source == HOME)
    resized = cv2.resize(load_image(sample), (224, 224), interpolation=cv2.INTER_AREA)
    features = np.random.default_rng(0).random(1280, dtype=np.float32)
    start = time.perf_counter()
    for _ in range(2000):
        image_facts(resized, (1024, 1024), 8)
        model_facts(0.5, np.array([0.9, 0.05, 0.03, 0.01, 0.01]), features)
    fields_ms = (time.perf_counter() - start) / 2000 * 1000
    monitor = DriftMonitor(config)
    for record in home[:config.baseline]:
        monitor.add(record)
    start = time.perf_counter()
    for record in home[config.baseline:] * 5:
        monitor.add(record)
    update_ms = (time.perf_counter() - start) / (5 * len(home[config.baseline:])) * 1000
    return {"fields_ms": round(fields_ms, 4), "update_ms": round(update_ms, 4)}


def markdown(record: dict) -> str:
    config, found = record["config"], record["false_alarms"]
    lines = ["# Drift monitoring on streams from the shared sets", "",
             f"Measured {record['created']} on {record['machine']['cpu']}; `python benchmarks/drift.py`; shipped INT8 "
             f"model; baseline {config['baseline']} images, window {config['window']}, thresholds for one false "
             f"alarm per {config['alarm_every']} images. Home hospital: {HOME} ({record['home_images']} films), "
             f"{record['shuffles']} shuffles per row.", "",
             f"No change: {found['alarms']} alarms over {found['monitored']} monitored images "
             f"({found['per_10000']} per 10,000).", "",
             "| switch after 100 more home films to | median delay (images) | worst delay | missed | alarm before "
             "the switch |", "| --- | --- | --- | --- | --- |"]
    for name, row in record["switches"].items():
        lines.append(f"| {name} | {row['median_delay']} | {row['worst_delay']} | {row['missed']} of "
                     f"{row['streams']} | {row['alarm_before_switch']} of {row['streams']} |")
    mix = record["case_mix"]
    lines += ["", f"Case mix (home films with 15 % pneumonias, then 85 %): {mix['alarms']} alarms in {mix['streams']} "
              f"streams; the last window's pneumonia share {mix['pneumonia_share_last_window']:.0%} is reported.",
              "", f"Cost per image: monitoring fields {record['costs']['fields_ms']:.3f} ms, online update "
              f"{record['costs']['update_ms']:.3f} ms (bar: under 0.2 ms together)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--shuffles", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "drift")
    parser.add_argument("--records", type=Path, default=None,
                        help="keep the classified records in this file and reuse them (outside the repository)")
    args = parser.parse_args()
    roots, config = resolve_data_dirs(args.data), DriftConfig()
    if args.records is not None and args.records.exists():
        groups = json.loads(args.records.read_text())
    else:
        with tempfile.TemporaryDirectory() as scratch:
            groups = records_by_group(roots, Path(scratch))
        if args.records is not None:
            args.records.write_text(json.dumps(groups))
    home = groups[HOME]
    switches = {name: switch(home, groups[source], args.shuffles, config) for name, source in OTHERS.items()}
    switches |= {f"home films, {name}": switch(home, groups[name], args.shuffles, config) for name in PROCESSING}
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "config": config.__dict__, "shuffles": args.shuffles, "home_images": len(home),
              "false_alarms": false_alarms(home, args.shuffles, config), "switches": switches,
              "case_mix": case_mix(groups["home normals"], groups["home pneumonias"], args.shuffles, config),
              "costs": costs(roots, home, config)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "drift.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    sys.exit(main())
