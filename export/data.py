"""Class-folder datasets: finding the data, naming the classes, splitting, and decoding through the runtime loader.

Images are decoded and resized exactly as the runtime does it (`cxr_edge.runtime.preprocess`), once, into memory;
training augments those arrays. Unreadable files are listed and counted, never silently dropped.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.contract import Contract
from ..runtime.errors import CxrEdgeError, ImageError
from ..runtime.images import IMAGE_SUFFIXES
from ..runtime.model_info import file_sha256
from ..runtime.preprocess import load_for_contract, resize

__all__ = [
    "CLASS_NAMES",
    "DatasetError",
    "Sample",
    "Dataset",
    "resolve_data_dir",
    "resolve_class",
    "scan_dataset",
    "stratified_split",
    "file_sha256",
    "manifest_hash",
    "load_resized",
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
    """Where the labelled data is, in order: the command-line option, ``$CXR_DATA``, then the shared dataset
    beside a source checkout (``../shared/datasets/cxr4``).

    Args:
        option: the value of ``--data``, if given.
    """
    if option:
        candidates = [("--data", Path(option))]
    elif os.environ.get(DATA_ENV):
        candidates = [(f"${DATA_ENV}", Path(os.environ[DATA_ENV]))]
    else:
        checkout = Path(__file__).resolve().parent.parent
        candidates = [("the shared dataset beside the checkout", checkout.parent / "shared" / "datasets" / "cxr4")]
    source, path = candidates[0]
    if not path.is_dir():
        hint = "" if option or os.environ.get(DATA_ENV) else f"; pass --data DIR or set {DATA_ENV}"
        raise DatasetError(f"data folder {path} (from {source}) does not exist{hint}")
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


def stratified_split(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded split that keeps each class's share: round(n * val_fraction) of every class goes to validation.

    The result depends only on the file names, labels, fraction and seed, not on listing order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted({s.label for s in samples}):
        members = sorted((s for s in samples if s.label == label), key=lambda s: s.path.as_posix())
        order = rng.permutation(len(members))
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction))) if len(members) > 1 else 0
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return train, val


def manifest_hash(samples: Sequence[Sample], root: str | Path) -> str:
    """One hash naming exactly which files, with which labels and contents, a model was trained on."""
    root = Path(root)
    lines = sorted(f"{CLASS_NAMES[s.label]}\t{s.path.relative_to(root).as_posix()}\t{file_sha256(s.path)}"
                   for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def load_resized(
    samples: Sequence[Sample], contract: Contract, *, workers: int | None = None,
    on_progress: Callable[[], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[Path, str]]]:
    """Decode and resize every sample with the runtime's loader, in a thread pool (decoders release the GIL).

    Returns:
        images (N x H x W float32 in [0, 1], before normalisation), labels (N,), and the files that could not be
        read with the reason for each.
    """

    def decode(sample: Sample) -> np.ndarray | ImageError:
        try:
            return resize(load_for_contract(sample.path, contract).pixels, contract)
        except ImageError as exc:
            return exc
        finally:
            if on_progress is not None:
                on_progress()

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(decode, samples))
    kept = [(r, s.label) for r, s in zip(results, samples, strict=True) if not isinstance(r, ImageError)]
    failed = [(r.path, r.reason) for r in results if isinstance(r, ImageError)]
    height, width = contract.input_size
    images = np.stack([r for r, _ in kept]) if kept else np.zeros((0, height, width), np.float32)
    labels = np.asarray([label for _, label in kept], np.int64)
    return images, labels, failed
