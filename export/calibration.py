"""Calibration sets: which images INT8 quantisation looks at to choose its value ranges.

A calibration set is either any image folder, or a manifest under ``calibration_data/``: the relative paths,
classes and SHA-256 hashes of a stratified subset of a labelled dataset, resolved against a data folder at
quantisation time. Manifests make a calibration reproducible without committing a single image; a file whose
hash differs from the manifest is an error, because a different image means a different calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..runtime.errors import CxrEdgeError
from ..runtime.evaluation.dataset import Dataset, Sample, scan_dataset
from ..runtime.model.classes import DEFAULT_CLASSES, resolve_label
from ..runtime.reading.images import IMAGE_SUFFIXES
from .data import file_sha256, manifest_hash

__all__ = ["MANIFEST_HEADER", "write_manifest", "read_manifest", "resolve_calibration", "CalibrationError"]

MANIFEST_HEADER = "# cxr-edge calibration manifest v2"
"""v2 names each file as ``<data root's folder name>/<path under it>``, so one manifest spans several roots;
v1 manifests (paths under a single root) are still read."""
_V1_HEADER = "# cxr-edge calibration manifest v1"
_COLUMNS = "class\tfile\tsha256"


class CalibrationError(CxrEdgeError):
    """A calibration set cannot be resolved (missing files, changed files, malformed manifest)."""


def write_manifest(dataset: Dataset, out: str | Path, *, per_class: int, seed: int = 0) -> list[Sample]:
    """Write a manifest of a seeded subset: `per_class` images of each class (all, if fewer), shared equally
    among the class's sources, so that every detector and format the model knows sets the INT8 ranges.

    Files are named by their data root's folder name and their path under it, so the manifest resolves against
    any copy of the data.
    """
    out = Path(out)
    if out.exists():
        raise CalibrationError(f"{out} already exists; choose another file")
    rng = np.random.default_rng(seed)
    chosen: list[Sample] = []
    for label in dataset.counts():
        members = sorted((s for s in dataset.samples if s.label == label), key=lambda s: s.key)
        by_source: dict[str, list[Sample]] = {}
        for sample in members:
            by_source.setdefault(sample.source, []).append(sample)
        queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_source.items())]
        picked: list[Sample] = []
        while len(picked) < per_class and any(queues):
            for queue in queues:
                if queue and len(picked) < per_class:
                    picked.append(queue.pop(0))
        chosen += sorted(picked, key=lambda s: s.key)
    lines = [MANIFEST_HEADER, f"# data manifest hash of the source dataset: {manifest_hash(dataset.samples)}",
             f"# {per_class} per class, shared among sources, seed {seed}", _COLUMNS]
    lines += [f"{s.label}\t{s.key}\t{file_sha256(s.path)}" for s in chosen]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return chosen


def read_manifest(manifest: str | Path, data_dirs: str | Path | Sequence[str | Path]) -> list[Sample]:
    """Resolve a manifest against data folders; every file must exist and match its hash.

    Raises:
        CalibrationError: naming every missing or changed file (not just the first).
    """
    manifest = Path(manifest)
    roots = [Path(data_dirs)] if isinstance(data_dirs, (str, Path)) else [Path(d) for d in data_dirs]
    try:
        text = manifest.read_text()
    except OSError as exc:
        raise CalibrationError(f"{manifest}: cannot read the manifest ({exc.strerror or exc})") from exc
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    version_two = text.startswith(MANIFEST_HEADER)
    if not (version_two or text.startswith(_V1_HEADER)) or not rows or rows[0] != _COLUMNS:
        raise CalibrationError(f"{manifest}: not a cxr-edge calibration manifest")
    by_name = {root.name: root for root in roots}
    samples, problems = [], []
    for number, row in enumerate(rows[1:], start=2):
        fields = row.split("\t")
        if len(fields) != 3 or resolve_label(fields[0], DEFAULT_CLASSES) is None:
            raise CalibrationError(f"{manifest}: malformed row {number}: {row!r}")
        name, relative, digest = fields
        if version_two:
            root_name, _, under = relative.partition("/")
            root = by_name.get(root_name)
            if root is None:
                problems.append(f"{relative}: no data folder named {root_name!r} was given")
                continue
            path = root / under
        else:
            root, path = roots[0], roots[0] / relative
        if not path.is_file():
            problems.append(f"{relative} is missing")
        elif file_sha256(path) != digest:
            problems.append(f"{relative} differs from the manifest (SHA-256 mismatch)")
        else:
            samples.append(Sample(path, *resolve_label(name, DEFAULT_CLASSES), root=root))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CalibrationError(f"{manifest} does not match {', '.join(map(str, roots))}: {shown}")
    return samples


def resolve_calibration(calib_dir: str | Path | None, manifest: str | Path | None,
                        data_dir: str | Path | None) -> list[Path]:
    """The calibration images, from exactly one source: an image folder, or a manifest plus its data folder."""
    if (calib_dir is None) == (manifest is None):
        raise CalibrationError("give exactly one calibration source: --calib DIR or --calib-manifest FILE")
    if manifest is not None:
        if data_dir is None:
            raise CalibrationError("--calib-manifest needs the data folder it was made from (--data or $CXR_DATA)")
        return [s.path for s in read_manifest(manifest, data_dir)]
    folder = Path(calib_dir)
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder {folder} does not exist")
    try:  # a labelled dataset works too
        return [s.path for s in scan_dataset(folder).samples]
    except CxrEdgeError:
        pass
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise CalibrationError(f"calibration folder {folder} holds no images")
    return files
