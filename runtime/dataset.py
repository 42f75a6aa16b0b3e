"""Labelled class-folder datasets: where the data is, which folder names mean which class, and what is in them.

Shared by training (``cxr_edge.export``) and by the runtime's accuracy benchmark, so that a folder that trains a
model is also a folder that can measure it. Reading the folders needs nothing beyond the standard library.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CxrEdgeError
from .images import IMAGE_SUFFIXES

__all__ = [
    "CLASS_NAMES",
    "DATA_ENV",
    "DatasetError",
    "Sample",
    "Dataset",
    "resolve_data_dir",
    "resolve_class",
    "scan_dataset",
]

CLASS_NAMES = ("normal", "covid19", "bacterial_pneumonia", "viral_pneumonia")
"""The canonical classes, in the order of every model's outputs."""

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


class DatasetError(CxrEdgeError):
    """A data folder cannot be used as a labelled dataset."""


@dataclass(frozen=True)
class Sample:
    """One labelled file; `label` indexes `CLASS_NAMES`."""

    path: Path
    label: int


@dataclass
class Dataset:
    """The labelled files of a class-folder dataset and the files that were skipped, with reasons."""

    root: Path
    samples: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Images per class, in canonical order."""
        labels = [s.label for s in self.samples]
        return {name: labels.count(i) for i, name in enumerate(CLASS_NAMES)}


def resolve_data_dir(option: str | Path | None) -> Path:
    """Where the labelled data is: the command-line option, else the ``$CXR_DATA`` setting.

    Args:
        option: the value of ``--data``, if given.

    Raises:
        DatasetError: neither is given, or the folder does not exist.
    """
    if option:
        source, path = "--data", Path(option)
    elif os.environ.get(DATA_ENV):
        source, path = f"${DATA_ENV}", Path(os.environ[DATA_ENV])
    else:
        raise DatasetError(f"no labelled data given: pass --data DIR or set {DATA_ENV}")
    if not path.is_dir():
        raise DatasetError(f"data folder {path} (from {source}) does not exist")
    return path


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


def scan_dataset(root: str | Path) -> Dataset:
    """List the labelled images under a class-folder dataset.

    Args:
        root: a folder of class folders, or a folder whose ``train`` subfolder holds them.

    Raises:
        DatasetError: unknown class folders (all listed), no class folders, or no images.
    """
    root = Path(root)
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
    samples, skipped = [], []
    for folder in folders:
        label = CLASS_NAMES.index(resolve_class(folder.name))
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(path, label))
            else:
                skipped.append((path, f"not an image file type ({path.suffix or 'no extension'})"))
    if not samples:
        raise DatasetError(f"{class_root}: no images found in {', '.join(p.name for p in folders)}")
    return Dataset(root, samples, skipped)
