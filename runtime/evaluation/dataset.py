"""Labelled class-folder datasets: where the data is, which folder names mean which class, and what each image is.

Shared by training (the build side) and by the runtime's accuracy benchmark, so that folders that train a model
are also folders that can measure it. Reading them needs nothing beyond the standard library.

A dataset has one or more roots (``--data A --data B``, or ``CXR_DATA=A:B``). Every image keeps where it came
from: its *source* (a hospital or collection), its *patient* where known (so that splits never put one patient
on both sides) and its *age group* (child, adult or unknown), read in this order:
1. the root's ``MANIFEST.tsv``, when it has ``source``/``patient``/``age``/``view`` columns;
2. a ``<source>__`` prefix of the file name;
3. `NAME_RULES`: the naming conventions of the public collections cxr-edge was trained on.
Lateral views (a manifest's view, or a ``-L`` name) are listed as skipped: the model is for frontal films.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CxrEdgeError
from ..reading.images import IMAGE_SUFFIXES

__all__ = [
    "CLASS_NAMES",
    "AGE_GROUPS",
    "DATA_ENV",
    "DatasetError",
    "Sample",
    "Dataset",
    "NameRule",
    "NAME_RULES",
    "resolve_data_dirs",
    "resolve_class",
    "scan_dataset",
]

CLASS_NAMES = ("normal", "covid19", "bacterial_pneumonia", "viral_pneumonia")
"""The canonical classes, in the order of every model's outputs."""

AGE_GROUPS = ("child", "adult", "unknown")

# Folder names seen in public chest X-ray collections, after lower-casing and folding '-', ' ' and '.' to '_'.
_ALIASES = {
    "normal": ("normal", "healthy", "no_finding", "nofinding", "negative"),
    "covid19": ("covid19", "covid", "covid_19", "sars_cov_2", "coronavirus"),
    "bacterial_pneumonia": ("bacterial_pneumonia", "pneumonia_bac", "pneumonia_bacterial", "bacterial", "bacteria",
                            "bacterial_pneumonias"),
    "viral_pneumonia": ("viral_pneumonia", "pneumonia_vir", "pneumonia_viral", "viral", "virus",
                        "viral_pneumonias"),
}
# The seed project's numbered folders: 0 Covid-19, 1 Normal, 2 Viral Pneumonia, 3 Bacterial Pneumonia.
_NUMBERED = {"0": "covid19", "1": "normal", "2": "viral_pneumonia", "3": "bacterial_pneumonia"}
_ALIAS_TO_CLASS = {alias: name for name, aliases in _ALIASES.items() for alias in aliases} | _NUMBERED

DATA_ENV = "CXR_DATA"
"""The setting that names the labelled data: one folder, or several separated by ``os.pathsep`` (``:``)."""

MANIFEST_NAME = "MANIFEST.tsv"
_LATERAL_VIEWS = re.compile(r"^(ll|rl|lat|lateral|left lateral|right lateral)$", re.IGNORECASE)
_LATERAL_NAME = re.compile(r"[-_ ](l|lat|lateral)$", re.IGNORECASE)


class DatasetError(CxrEdgeError):
    """A data folder cannot be used as a labelled dataset."""


@dataclass(frozen=True)
class NameRule:
    """A public collection recognised by its file names.

    Args:
        pattern: matched against the file's stem; its first group, if any, names the patient.
        source: the collection's name in reports.
        age: ``child``, ``adult`` or ``unknown``.
    """

    pattern: re.Pattern[str]
    source: str
    age: str


NAME_RULES = (
    # Kermany et al., Guangzhou Women and Children's Medical Center: children aged one to five.
    NameRule(re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+$"), "kermany", "child"),
    NameRule(re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+$"), "kermany", "child"),
)
"""Naming conventions of collections whose files carry no manifest columns or prefix, first match wins."""

DEFAULT_SOURCE = {"covid19": ("ieee8023-covid", "adult")}
"""Files of a class that no rule recognises: the COVID-19 image data collection (adults, figures from papers)."""


@dataclass(frozen=True)
class Sample:
    """One labelled file.

    Args:
        path: the file.
        label: index into `CLASS_NAMES`.
        source: collection or hospital (``unknown`` where nothing says).
        patient: patient key where known; images of one patient never straddle a split.
        age: ``child``, ``adult`` or ``unknown``.
        root: the data root the file was found under (its name prefixes `key`).
    """

    path: Path
    label: int
    source: str = "unknown"
    patient: str | None = None
    age: str = "unknown"
    root: Path | None = None

    @property
    def key(self) -> str:
        """``<root name>/<path under the root>``: names the file the same way on any copy of the data."""
        if self.root is None:
            return self.path.as_posix()
        return f"{self.root.name}/{self.path.relative_to(self.root).as_posix()}"

    @property
    def group(self) -> str:
        """The unit a split keeps together: the patient, or the image itself where the patient is unknown."""
        return f"{self.source}/{self.patient}" if self.patient else self.key


@dataclass
class Dataset:
    """The labelled files of one or more class-folder roots and the files that were skipped, with reasons."""

    roots: list[Path]
    samples: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """The first root (for messages)."""
        return self.roots[0]

    def counts(self) -> dict[str, int]:
        """Images per class, in canonical order."""
        labels = [s.label for s in self.samples]
        return {name: labels.count(i) for i, name in enumerate(CLASS_NAMES)}

    def cells(self) -> dict[str, int]:
        """Images per ``class/source/age`` cell: what a model can learn from, and where it is blind."""
        cells = Counter(f"{CLASS_NAMES[s.label]}/{s.source}/{s.age}" for s in self.samples)
        return dict(sorted(cells.items()))


def resolve_data_dirs(options: Sequence[str | Path] | str | Path | None) -> list[Path]:
    """Where the labelled data is: the ``--data`` options, else the ``$CXR_DATA`` setting.

    Args:
        options: the values of ``--data`` (one or several), if given.

    Raises:
        DatasetError: nothing is given, or a folder does not exist.
    """
    if isinstance(options, (str, Path)):
        options = [options]
    if options:
        source, paths = "--data", [Path(o) for o in options]
    elif os.environ.get(DATA_ENV):
        source, paths = f"${DATA_ENV}", [Path(p) for p in os.environ[DATA_ENV].split(os.pathsep) if p]
    else:
        raise DatasetError(f"no labelled data given: pass --data DIR or set {DATA_ENV}")
    for path in paths:
        if not path.is_dir():
            raise DatasetError(f"data folder {path} (from {source}) does not exist")
    return paths


def resolve_class(folder_name: str) -> str | None:
    """The canonical class for a folder name (``COVID-19`` -> ``covid19``, ``3`` -> ``bacterial_pneumonia``)."""
    key = re.sub(r"[\s\-.]+", "_", folder_name.strip().lower())
    return _ALIAS_TO_CLASS.get(key)


def _class_root(root: Path) -> Path:
    """The folder holding the class folders: `root` itself, or its ``train`` folder (the shared layout)."""
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any(resolve_class(p.name) for p in subdirs):
        return root
    if (root / "train").is_dir():
        return root / "train"
    return root


def _manifest(root: Path) -> dict[str, dict[str, str]]:
    """A root's MANIFEST.tsv rows by file (as the manifest writes it), when it describes sources; else {}."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: unreadable manifest ({exc})") from exc
    if not rows or "file" not in rows[0] or not {"source", "patient", "age", "view"} & set(rows[0]):
        return {}
    return {row["file"]: row for row in rows if row.get("file")}


def _age(text: str | None) -> str:
    text = (text or "").lower()
    return next((group for group in ("child", "adult") if group in text), "unknown")


def _document_key(stem: str) -> str:
    """Figures cropped from one paper or one case report (``...gr2_lrg-a``, ``...-day5``, ``....pdf-001``) most
    likely show one patient: group them by what remains after the panel, day and view markers."""
    key = re.sub(r"\.pdf.*$", "", stem.lower())
    while True:
        shorter = re.sub(r"[-_.](day\d+|[a-h]\d?|l|pa|ap|lrg)$", "", key)
        if shorter == key:
            return key
        key = shorter


def _describe(path: Path, root: Path, label: int, manifest: dict[str, dict[str, str]]) -> tuple[Sample, str | None]:
    """The sample for one file, and why it is skipped (a lateral view), or None."""
    relative = path.relative_to(root).as_posix()
    row = manifest.get(relative) or manifest.get(path.relative_to(_class_root(root)).as_posix()) or {}
    stem = path.stem
    view = row.get("view", "")
    if _LATERAL_VIEWS.match(view.strip()) or (not view and _LATERAL_NAME.search(stem)):
        return Sample(path, label, root=root), \
            f"lateral view ({view or 'named ' + stem}); the model is for frontal films"
    if row.get("source"):
        return Sample(path, label, row["source"], row.get("patient") or None, _age(row.get("age")), root), None
    if "__" in stem:
        prefix, _, rest = stem.partition("__")
        return Sample(path, label, prefix, None, "unknown", root), None
    for rule in NAME_RULES:
        match = rule.pattern.match(stem)
        if match:
            patient = match.group(1) if match.groups() else None
            return Sample(path, label, rule.source, patient, rule.age, root), None
    source, age = DEFAULT_SOURCE.get(CLASS_NAMES[label], ("unknown", "unknown"))
    return Sample(path, label, source, _document_key(stem), age, root), None


def scan_dataset(roots: str | Path | Sequence[str | Path]) -> Dataset:
    """List the labelled images under one or more class-folder roots.

    Args:
        roots: folders of class folders, or folders whose ``train`` subfolder holds them.

    Raises:
        DatasetError: unknown class folders (all listed), no class folders, or no images.
    """
    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    samples, skipped = [], []
    for root in roots:
        if not root.is_dir():
            raise DatasetError(f"data folder {root} does not exist")
        class_root = _class_root(root)
        folders = sorted(p for p in class_root.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = [p.name for p in folders if resolve_class(p.name) is None]
        if unknown:
            raise DatasetError(
                f"{class_root}: unknown class folders: {', '.join(unknown)} (expected folders named for "
                f"{', '.join(CLASS_NAMES)} or a common alias such as COVID-19, Normal, pneumonia_bac, or 0-3)"
            )
        if not folders:
            raise DatasetError(f"{class_root}: no class folders (expected {', '.join(CLASS_NAMES)})")
        manifest = _manifest(root)
        found = 0
        for folder in folders:
            label = CLASS_NAMES.index(resolve_class(folder.name))
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    skipped.append((path, f"not an image file type ({path.suffix or 'no extension'})"))
                    continue
                sample, reason = _describe(path, root, label, manifest)
                if reason:
                    skipped.append((path, reason))
                else:
                    samples.append(sample)
                    found += 1
        if not found:
            raise DatasetError(f"{class_root}: no images found in {', '.join(p.name for p in folders)}")
    return Dataset(roots, samples, skipped)
