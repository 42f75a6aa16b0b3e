"""Labelled class-folder datasets: where the data is, which folder names mean which class, and what each image is.

Shared by training (the build side) and by the runtime's accuracy benchmark, so that folders that train a model
are also folders that can measure it. Reading them needs nothing beyond the standard library.

A dataset has one or more roots (``--data A --data B``, or ``CXR_DATA=A:B``). Class folders are named for the
model's classes or their aliases (`cxr_edge.runtime.model.classes.resolve_label`); a folder named for a coarse
label such as ``pneumonia`` holds images that are one of several classes, not known which: each image keeps its
*label* and the *classes* that label allows. Every image keeps where it came from: its *source* (a hospital or
collection), its *patient* where known (so that splits never put one patient on both sides), its *age group*
(child, adult or unknown; a manifest's age may be a number of years, 18 and over being adult) and its *view*
(PA, AP or unknown), read in this order:
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
from ..model.classes import DEFAULT_CLASSES, resolve_label
from ..model.gate import ADULT_AGE_YEARS
from ..reading.images import IMAGE_SUFFIXES

__all__ = [
    "AGE_GROUPS",
    "DATA_ENV",
    "DatasetError",
    "Sample",
    "Dataset",
    "NameRule",
    "NAME_RULES",
    "resolve_data_dirs",
    "scan_dataset",
]

AGE_GROUPS = ("child", "adult", "unknown")

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
        label: what its folder says: a class name, or a coarse label (``pneumonia``).
        classes: the model classes the label allows (one for a class, several for a coarse label).
        source: collection or hospital (``unknown`` where nothing says).
        patient: patient key where known; images of one patient never straddle a split.
        age: ``child``, ``adult`` or ``unknown``.
        root: the data root the file was found under (its name prefixes `key`).
        view: ``PA``, ``AP`` or ``unknown`` (a manifest's view column).
    """

    path: Path
    label: str
    classes: tuple[str, ...] = ()
    source: str = "unknown"
    patient: str | None = None
    age: str = "unknown"
    root: Path | None = None
    view: str = "unknown"

    def __post_init__(self) -> None:
        if not self.classes:
            object.__setattr__(self, "classes", (self.label,))

    @property
    def coarse(self) -> bool:
        """Whether the label allows several classes (its image is one of them, not known which)."""
        return len(self.classes) > 1

    @property
    def cell(self) -> str:
        """``label/source/age``: the cell of the data this image stands for."""
        return f"{self.label}/{self.source}/{self.age}"

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
    class_names: tuple[str, ...] = DEFAULT_CLASSES

    @property
    def root(self) -> Path:
        """The first root (for messages)."""
        return self.roots[0]

    def counts(self) -> dict[str, int]:
        """Images per label: the classes in the model's order, then coarse labels."""
        labels = Counter(s.label for s in self.samples)
        return {name: labels[name] for name in (*self.class_names, *sorted(set(labels) - set(self.class_names)))}

    def cells(self) -> dict[str, int]:
        """Images per ``label/source/age`` cell: what a model can learn from, and where it is blind."""
        return dict(sorted(Counter(s.cell for s in self.samples).items()))


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


def _class_root(root: Path, class_names: Sequence[str]) -> Path:
    """The folder holding the class folders: `root` itself, or its ``train`` folder (the shared layout)."""
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any(resolve_label(p.name, class_names) for p in subdirs):
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
    """``child``/``adult`` from a manifest's age: a group's name, or a number of years (18 and over: adult)."""
    text = (text or "").strip().lower()
    try:
        return "adult" if float(text) >= ADULT_AGE_YEARS else "child"
    except ValueError:
        return next((group for group in ("child", "adult") if group in text), "unknown")


def _view(text: str | None) -> str:
    text = (text or "").strip().upper()
    return text if text in ("PA", "AP") else "unknown"


def _document_key(stem: str) -> str:
    """Figures cropped from one paper or one case report (``...gr2_lrg-a``, ``...-day5``, ``....pdf-001``) most
    likely show one patient: group them by what remains after the panel, day and view markers."""
    key = re.sub(r"\.pdf.*$", "", stem.lower())
    while True:
        shorter = re.sub(r"[-_.](day\d+|[a-h]\d?|l|pa|ap|lrg)$", "", key)
        if shorter == key:
            return key
        key = shorter


def _describe(path: Path, root: Path, label: tuple[str, tuple[str, ...]], row: dict[str, str]
              ) -> tuple[Sample, str | None]:
    """The sample for one file (its manifest row, if any), and why it is skipped (a lateral view), or None."""
    name, classes = label
    stem = path.stem
    view = row.get("view", "")
    if _LATERAL_VIEWS.match(view.strip()) or (not view and _LATERAL_NAME.search(stem)):
        return Sample(path, name, classes, root=root), \
            f"lateral view ({view or 'named ' + stem}); the model is for frontal films"
    if row.get("source"):
        return Sample(path, name, classes, row["source"], row.get("patient") or None, _age(row.get("age")), root,
                      _view(view)), None
    if "__" in stem:
        prefix, _, rest = stem.partition("__")
        return Sample(path, name, classes, prefix, None, "unknown", root), None
    for rule in NAME_RULES:
        match = rule.pattern.match(stem)
        if match:
            patient = match.group(1) if match.groups() else None
            return Sample(path, name, classes, rule.source, patient, rule.age, root), None
    source, age = DEFAULT_SOURCE.get(name, ("unknown", "unknown"))
    return Sample(path, name, classes, source, _document_key(stem), age, root), None


def scan_dataset(roots: str | Path | Sequence[str | Path], class_names: Sequence[str] = DEFAULT_CLASSES) -> Dataset:
    """List the labelled images under one or more class-folder roots.

    Args:
        roots: folders of class folders, or folders whose ``train`` subfolder holds them.
        class_names: the model's classes, which the folders' names (or aliases, or coarse labels) must mean.

    Raises:
        DatasetError: unknown class folders (all listed), no class folders, or no images.
    """
    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    class_names = tuple(class_names)
    samples, skipped = [], []
    for root in roots:
        if not root.is_dir():
            raise DatasetError(f"data folder {root} does not exist")
        found, lost = _scan_root(root, class_names)
        samples += found
        skipped += lost
    return Dataset(roots, samples, skipped, class_names)


def _scan_root(root: Path, class_names: tuple[str, ...]) -> tuple[list[Sample], list[tuple[Path, str]]]:
    class_root = _class_root(root, class_names)
    folders = sorted(p for p in class_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if resolve_label(p.name, class_names) is None]
    if unknown:
        raise DatasetError(
            f"{class_root}: unknown class folders: {', '.join(unknown)} (expected folders named for "
            f"{', '.join(class_names)}, a common alias such as COVID-19, Normal, pneumonia_bac or 0-3, or a coarse "
            "label such as pneumonia)")
    if not folders:
        raise DatasetError(f"{class_root}: no class folders (expected {', '.join(class_names)})")
    manifest = _manifest(root)
    samples, skipped = [], []
    for folder in folders:
        label = resolve_label(folder.name, class_names)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((path, f"not an image file type ({path.suffix or 'no extension'})"))
                continue
            row = manifest.get(path.relative_to(root).as_posix()) or \
                manifest.get(path.relative_to(class_root).as_posix()) or {}
            sample, reason = _describe(path, root, label, row)
            if reason:
                skipped.append((path, reason))
            else:
                samples.append(sample)
    if not samples:
        raise DatasetError(f"{class_root}: no images found in {', '.join(p.name for p in folders)}")
    return samples, skipped
