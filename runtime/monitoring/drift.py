"""Label-free drift monitoring: is what arrives still like what arrived when the site was judged?

The results of a site's first `DriftConfig.baseline` images form its baseline. Each later image moves a sliding
window of the last `window` results, and every acquisition signal of that window is compared with the baseline:

- the window mean of each scalar image or model fact (brightness, spread, edges, stored megapixels, gate score,
  upright probability) as a z statistic, its standard error from the baseline's spread for both samples;
- the window mean of the 8-dimensional feature projection as a Hotelling T^2 distance, the baseline covariance
  shrunk towards its diagonal so that 200 images suffice.

Thresholds come from resampling the baseline: `DriftConfig.streams` streams without change are drawn from it (each
against its own resampled baseline, so the baseline's own sampling error is inside), every signal's largest
statistic over them is found, and the threshold sits just above it. Their length together is `alarm_every`
images, so a stream without change raises about one false alarm per that many images.

Alongside, not as alarms: the case mix (the share of each finding per window against the baseline's; a COVID-19
wave is a change of patients, not of images) and device events (a manufacturer, model or software version not in
the baseline, reported at its first image). The same `DriftMonitor` runs offline over a results file
(`cxr-edge drift`) and online in the live modes, so both give the same statistics on the same stream.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from ..files import replace_json
from ..model.facts import PROJECTION_DIMS

__all__ = ["DriftConfig", "DriftMonitor", "SIGNALS", "read_results", "drift_report", "signal_values", "plot_drift"]

SIGNALS = ("brightness", "spread", "edges", "megapixels", "gate_score", "upright", "features")
"""Acquisition signals, each raising its own alarm; `features` is the multivariate one."""
SCALARS = SIGNALS[:-1]
SD_FLOOR = {"brightness": 0.002, "spread": 0.002, "edges": 0.0005, "megapixels": 0.01, "gate_score": 0.01,
            "upright": 0.002}
"""The least spread a signal is given: a baseline of identical values (every film 512 x 512) still leaves a change
of 1 % of a megapixel, or a fraction of a grey level, unremarkable."""
END_FRACTION = 0.8
"""An alarm ends when its statistic falls below this share of the threshold, not at the first dip under it: a
signal hovering at the line is one alarm, not a flicker of many."""
TRIM = 0.1
"""Share of a window's values dropped at each end before its mean is compared."""
MIN_PER_FINDING = 10
"""Baseline images a finding needs for its own means; a rarer finding is compared with the whole baseline."""


@dataclass(frozen=True)
class DriftConfig:
    """The monitoring recipe: one object, saved with a baseline so that a later run judges alike."""

    baseline: int = 200
    window: int = 40
    alarm_every: int = 10_000
    streams: int = 20
    margin: float = 1.25
    seed: int = 0

    @classmethod
    def for_baseline(cls, baseline: int) -> DriftConfig:
        """A recipe for a baseline of `baseline` results: the window a fifth of it, at most 40 and at least 5."""
        return cls(baseline=baseline, window=min(cls.window, max(5, baseline // 5)))


def signal_values(record: dict[str, Any]) -> dict[str, Any] | None:
    """A result record's monitoring signals, or None for a failed input (nothing was seen)."""
    monitor = record.get("monitor") or {}
    image, model = monitor.get("image") or {}, monitor.get("model") or {}
    if record.get("error") is not None or not image:
        return None
    megapixels = (image.get("width") or 0) * (image.get("height") or 0) / 1e6
    return {"brightness": image.get("mean"), "spread": image.get("spread"), "edges": image.get("edges"),
            "megapixels": megapixels, "gate_score": model.get("gate_score"), "upright": model.get("upright"),
            "features": model.get("projection"), "finding": record.get("finding") or record.get("label"),
            "device": _device(monitor.get("device"))}


def _device(device: dict[str, Any] | None) -> str | None:
    if not device:
        return None
    parts = [str(device.get(key) or "?") for key in ("manufacturer", "model", "software")]
    return " / ".join(parts) if any(part != "?" for part in parts) else None


@dataclass
class _Reference:
    """The baseline's summary, per finding: each signal is compared as its residual from the baseline mean of
    the image's own finding, so that a change of patients (more pneumonias, whose films are whiter and whose
    features differ) moves no acquisition signal, while a change of the images moves every finding's alike."""

    centres: dict[str, dict[str, Any]]
    sd: dict[str, float]
    feature_inverse: np.ndarray | None
    count: int
    sizes: dict[Any, int]
    """Baseline images behind each finding's centre (None: the whole baseline)."""

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> _Reference:
        findings = Counter(r["finding"] for r in rows)
        groups = {f: [r for r in rows if r["finding"] == f] for f, n in findings.items() if n >= MIN_PER_FINDING}
        groups[None] = rows  # the whole baseline, for findings it saw too rarely
        centres: dict[str, dict[str, Any]] = {}
        for finding, members in groups.items():
            centres[finding] = {name: _mean([r[name] for r in members]) for name in SCALARS}
            vectors = [r["features"] for r in members if r["features"] is not None]
            centres[finding]["features"] = np.mean(np.array(vectors, np.float64), axis=0) if vectors else None
        reference = cls(centres, {}, None, len(rows), {f: len(m) for f, m in groups.items()})
        residuals = [reference.residual(r) for r in rows]
        for name in SCALARS:
            values = np.array([r[name] for r in residuals if r.get(name) is not None], np.float64)
            if values.size >= 2:  # the upper 95 % bound of the spread: a baseline that happens to look calm
                upper = 1 + 1.645 / np.sqrt(2 * (values.size - 1))  # must not make ordinary windows look odd
                reference.sd[name] = float(max(values.std(ddof=1) * upper, SD_FLOOR[name]))
        vectors = np.array([r["features"] for r in residuals if r.get("features") is not None], np.float64)
        if len(vectors) >= 10:
            covariance = np.cov(vectors, rowvar=False)
            shrunk = 0.5 * covariance + 0.5 * np.diag(np.diag(covariance)) + 1e-9 * np.eye(len(covariance))
            reference.feature_inverse = np.linalg.inv(shrunk)
        return reference

    def residual(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row's signals less the baseline mean of its finding."""
        centre = self.centres.get(row["finding"], self.centres[None])
        found: dict[str, Any] = {}
        for name in SCALARS:
            if row[name] is not None and centre[name] is not None:
                found[name] = row[name] - centre[name]
        if row["features"] is not None and centre["features"] is not None:
            found["features"] = np.asarray(row["features"], np.float64) - centre["features"]
        return found

    def statistics(self, window: list[dict[str, Any]]) -> dict[str, float]:
        """Each signal's statistic for one window (absent where the window or baseline lacks the signal).

        The standard error counts the window's own spread and the error of each finding's baseline centre it was
        compared with, weighted by that finding's share of the window: a window of mostly a rare finding leans on
        a centre estimated from few baseline images.
        """
        residuals = [self.residual(r) for r in window]
        keys = [r["finding"] if r["finding"] in self.centres else None for r in window]
        shares = Counter(keys)
        centre_error = sum((n / len(window)) ** 2 / self.sizes[key] for key, n in shares.items())
        variance = 1 / len(window) + centre_error  # in units of the signal's within-finding variance
        found: dict[str, float] = {}
        for name, sd in self.sd.items():
            values = [r[name] for r in residuals if name in r]
            if values:
                found[name] = abs(_trimmed_mean(values)) / (sd * np.sqrt(variance))
        vectors = [r["features"] for r in residuals if "features" in r]
        if vectors and self.feature_inverse is not None:
            difference = np.mean(vectors, axis=0)
            distance = difference @ self.feature_inverse @ difference / variance
            found["features"] = float(np.sqrt(max(distance, 0.0)))
        return found


def _trimmed_mean(values: list[float]) -> float:
    """The mean of the middle 80 %: one odd film (a child among adults, a phantom) does not move a window."""
    ordered = np.sort(np.asarray(values, np.float64))
    cut = int(len(ordered) * TRIM)
    return float(ordered[cut:len(ordered) - cut].mean())


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _analytic(config: DriftConfig) -> dict[str, float]:
    """The thresholds the statistics' own distributions give for one false alarm per `alarm_every` images, shared
    among the signals: a normal quantile for the scalars, and for the features the Wilson-Hilferty
    approximation of the chi-square quantile with `PROJECTION_DIMS` degrees of freedom (square-rooted)."""
    alpha = 1 / config.alarm_every / len(SIGNALS)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    k = PROJECTION_DIMS
    chi = k * (1 - 2 / (9 * k) + NormalDist().inv_cdf(1 - alpha) * np.sqrt(2 / (9 * k))) ** 3
    return {name: z for name in SCALARS} | {"features": float(np.sqrt(chi))}


def _thresholds(rows: list[dict[str, Any]], config: DriftConfig) -> dict[str, float]:
    """Per signal, just above the largest statistic on streams without change drawn from the baseline, and never
    below what the statistic's own distribution gives (resampling 200 images sees too few tails alone)."""
    random = np.random.default_rng(config.seed)
    length = max(config.window, config.alarm_every // config.streams)
    largest: dict[str, float] = {}
    for _ in range(config.streams):
        baseline = [rows[i] for i in random.integers(0, len(rows), len(rows))]
        stream = [rows[i] for i in random.integers(0, len(rows), length)]
        reference = _Reference.of(baseline)
        for end in range(config.window, length + 1):
            for name, value in reference.statistics(stream[end - config.window:end]).items():
                largest[name] = max(largest.get(name, 0.0), value)
    floor = _analytic(config)
    return {name: max(value * config.margin, floor[name]) for name, value in largest.items()}


@dataclass
class DriftMonitor:
    """Online drift statistics over a stream of result records, in bounded memory.

    Feed records in arrival order with `add`; it returns the alarms and events that start or end at that record.
    `status()` is what a live mode writes into status.json.
    """

    config: DriftConfig = field(default_factory=DriftConfig)
    baseline_rows: list[dict[str, Any]] = field(default_factory=list)
    reference: _Reference | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    recent: deque = field(default_factory=deque)
    latest: dict[str, float] = field(default_factory=dict)
    active: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)
    baseline_mix: Counter = field(default_factory=Counter)
    seen: int = 0
    lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)
    """Results and status.json are handled on different threads in the live modes."""

    @classmethod
    def from_baseline(cls, path: Path, config: DriftConfig | None = None) -> DriftMonitor:
        """A monitor whose baseline is a saved one (`save_baseline`), ready to judge from the first record."""
        data = json.loads(Path(path).read_text())
        monitor = cls(config or DriftConfig(**data["config"]))
        for row in data["rows"]:
            monitor._learn(row)
        monitor._freeze()
        return monitor

    def save_baseline(self, path: Path) -> None:
        """The baseline's rows and recipe, to judge a later stream against (`--baseline-from`)."""
        if self.reference is None:
            raise ValueError(f"the baseline is not complete: {len(self.baseline_rows)} of {self.config.baseline}")
        replace_json(Path(path), {"config": asdict(self.config), "rows": self.baseline_rows})  # private, atomic

    def add(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Take one result in arrival order; the alarms, alarm ends and device events it causes."""
        with self.lock:
            return self._add(record)

    def _add(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        row = signal_values(record)
        index, self.seen = self.seen, self.seen + 1
        if row is None:
            return []
        at = record.get("finished") or record.get("arrived")
        if self.reference is None:
            self._learn(row)
            if len(self.baseline_rows) >= self.config.baseline:
                self._freeze()
            return []
        return self._device_event(row, index, at) + self._judge(row, index, at)

    def _learn(self, row: dict[str, Any]) -> None:
        self.baseline_rows.append(row)
        if row["device"]:
            self.devices.add(row["device"])
        if row["finding"]:
            self.baseline_mix[row["finding"]] += 1

    def _freeze(self) -> None:
        self.reference = _Reference.of(self.baseline_rows)
        self.thresholds = _thresholds(self.baseline_rows, self.config)
        self.recent = deque(maxlen=self.config.window)

    def _device_event(self, row: dict[str, Any], index: int, at: str | None) -> list[dict[str, Any]]:
        if not row["device"] or row["device"] in self.devices:
            return []
        self.devices.add(row["device"])
        return [{"index": index, "at": at, "kind": "device", "device": row["device"]}]

    def _judge(self, row: dict[str, Any], index: int, at: str | None) -> list[dict[str, Any]]:
        self.recent.append(row)
        if len(self.recent) < self.config.window:
            return []
        self.latest = self.reference.statistics(list(self.recent))
        changes = []
        for name, value in self.latest.items():
            threshold = self.thresholds.get(name)
            if threshold is None:
                continue
            if name not in self.active and value > threshold:
                self.active[name] = {"index": index, "at": at, "kind": "alarm", "signal": name,
                                     "statistic": round(value, 3), "threshold": round(threshold, 3)}
                changes.append(self.active[name])
            elif name in self.active and value <= threshold * END_FRACTION:
                self.active.pop(name).update(ended=index, ended_at=at)  # the start, as reported, learns its end
                changes.append({"index": index, "at": at, "kind": "alarm-end", "signal": name,
                                "statistic": round(value, 3), "threshold": round(threshold, 3)})
        return changes

    def case_mix(self) -> dict[str, dict[str, float]]:
        """The share of each finding in the current window and in the baseline (reported, never an alarm)."""
        now = Counter(r["finding"] for r in self.recent if r["finding"])
        total_now, total_then = max(sum(now.values()), 1), max(sum(self.baseline_mix.values()), 1)
        return {name: {"window": round(now[name] / total_now, 3), "baseline": round(self.baseline_mix[name] /
                                                                                    total_then, 3)}
                for name in sorted(set(now) | set(self.baseline_mix))}

    def status(self) -> dict[str, Any]:
        """The monitor's state for status.json and the status page."""
        with self.lock:
            return self._status()

    def _status(self) -> dict[str, Any]:
        return {"baseline": {"images": len(self.baseline_rows), "needed": self.config.baseline,
                             "complete": self.reference is not None},
                "window": self.config.window, "seen": self.seen,
                "statistics": {k: round(v, 3) for k, v in self.latest.items()},
                "thresholds": {k: round(v, 3) for k, v in self.thresholds.items()},
                "alarms": list(self.active.values()), "devices": sorted(self.devices),
                "case_mix": self.case_mix() if self.reference is not None else {}}


def read_results(sources: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """Result records in the order they were finished (the order a live mode's monitor saw them) from `predict`
    jsonl files, live output folders (``results/*.json``) or score-archive folders (``results.jsonl``)."""
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted((path / "results").glob("*.json")) if (path / "results").is_dir() else []
            if files:
                records = [json.loads(f.read_text()) for f in files]
                yield from sorted(records, key=lambda r: (r.get("finished") or "", r.get("arrived") or ""))
                continue
            path = path / "results.jsonl"
        with path.open() as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def drift_report(records: Iterable[dict[str, Any]], monitor: DriftMonitor, *,
                 series: bool = False) -> dict[str, Any]:
    """The offline report: alarms, device events, and every window's statistics and case mix; with `series`,
    every image's statistics too (for the plot)."""
    alarms, events, windows = [], [], []
    trace: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for change in monitor.add(record):
            if change["kind"] != "alarm-end":  # an alarm's end is written into its start
                (events if change["kind"] == "device" else alarms).append(change)
        if series and monitor.latest and len(monitor.recent) == monitor.config.window:
            for name, value in monitor.latest.items():
                trace.setdefault(name, []).append((monitor.seen - 1, round(value, 3)))
        if monitor.reference is not None and monitor.seen % monitor.config.window == 0 and monitor.latest:
            windows.append({"end": monitor.seen - 1, "at": record.get("finished") or record.get("arrived"),
                            "statistics": {k: round(v, 3) for k, v in monitor.latest.items()},
                            "case_mix": monitor.case_mix()})
    return {"config": asdict(monitor.config), "images": monitor.seen, "thresholds": monitor.status()["thresholds"],
            "baseline_complete": monitor.reference is not None, "alarms": alarms, "events": events,
            "windows": windows} | ({"series": trace} if series else {})


def plot_drift(report: dict[str, Any], path: Path) -> None:
    """Each signal over the stream with its threshold, alarms shaded and device events marked (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in SIGNALS if name in report.get("series", {})]
    figure, axes = plt.subplots(len(names) or 1, 1, figsize=(10, 1.6 * max(len(names), 1) + 0.6), sharex=True,
                                squeeze=False)
    for axis, name in zip(axes[:, 0], names, strict=False):
        points = np.array(report["series"][name])
        axis.plot(points[:, 0], points[:, 1], lw=0.8, color="#1f5f8b")
        axis.axhline(report["thresholds"].get(name, np.nan), color="#c0392b", lw=0.8, ls="--")
        for alarm in (a for a in report["alarms"] if a["signal"] == name):
            axis.axvspan(alarm["index"], alarm.get("ended", points[-1, 0]), color="#c0392b", alpha=0.15)
        for event in report["events"]:
            axis.axvline(event["index"], color="#7f8c8d", lw=0.8)
        axis.set_ylabel(name, rotation=0, ha="right", fontsize=8)
    axes[-1, 0].set_xlabel("image (arrival order); dashed: alarm threshold; grey lines: new devices")
    figure.suptitle(f"Drift against the first {report['config']['baseline']} images, window "
                    f"{report['config']['window']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
