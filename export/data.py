"""Training data from class-folder datasets (`cxr_edge.runtime.evaluation.dataset`): splitting, hashing, and decoding
through the runtime loader.

Images are decoded and resized exactly as the runtime does it (`cxr_edge.runtime.model.preprocess`), once, into memory;
training augments those arrays. Unreadable files are listed and counted, never silently dropped.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..runtime.evaluation.dataset import DatasetError, Sample
from ..runtime.model.contract import Contract
from ..runtime.model.model_file import file_sha256
from ..runtime.model.preprocess import load_many

__all__ = [
    "stratified_split",
    "file_sha256",
    "manifest_hash",
    "load_resized",
]


def stratified_split(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded split by patient that keeps each class-and-source cell's share in validation.

    Every patient (`Sample.group`; an image of unknown patient is its own group) goes whole to one side, so serial
    films of one patient never judge a model that saw their siblings. Within each cell (class, source) patients
    in seeded random order go to validation until round(n * val_fraction) images are there (at least one patient
    of a cell with two or more), passing over a patient whose films would overshoot that by half. The result
    depends only on the file names, labels, sources, fraction and seed, not on order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    groups: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.key):
        groups.setdefault(sample.group, []).append(sample)
    cells: dict[tuple[int, str], list[str]] = {}
    for name, members in groups.items():
        label, source = Counter((s.label, s.source) for s in members).most_common(1)[0][0]
        cells.setdefault((label, source), []).append(name)
    rng = np.random.default_rng(seed)
    val_groups: set[str] = set()
    for cell in sorted(cells):
        names = sorted(cells[cell])
        images = sum(len(groups[n]) for n in names)
        target = round(images * val_fraction)
        if len(names) < 2 or target == 0:
            continue
        taken, chosen = 0, 0
        for index in rng.permutation(len(names)):
            if taken >= max(1, target) or chosen == len(names) - 1:
                break
            size = len(groups[names[index]])
            if taken + size > target * 1.5 + 1:  # a patient with many films would unbalance the cell: skip them
                continue
            val_groups.add(names[index])
            taken, chosen = taken + size, chosen + 1
    train = [s for name, members in groups.items() if name not in val_groups for s in members]
    val = [s for name, members in groups.items() if name in val_groups for s in members]
    return train, val


def manifest_hash(samples: Sequence[Sample]) -> str:
    """One hash naming exactly which files, with which labels and contents, a model was trained on."""
    lines = sorted(f"{s.label}\t{s.key}\t{file_sha256(s.path)}" for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def load_resized(
    samples: Sequence[Sample], contract: Contract, *, workers: int | None = None,
    on_progress: Callable[[], None] | None = None,
) -> tuple[np.ndarray, list[Sample], list[tuple[Path, str]]]:
    """Decode and resize every sample with the runtime's loader (`cxr_edge.runtime.model.preprocess.load_many`).

    Returns:
        images (N x H x W float32 in [0, 1], before standardisation and normalisation), the samples they are (in
        order), and the files that could not be read with the reason for each.
    """
    images, kept, errors = load_many([s.path for s in samples], contract, workers=workers, on_progress=on_progress)
    return images, [samples[i] for i in kept], [(e.path, e.reason) for e in errors]
