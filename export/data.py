"""Training data from class-folder datasets (`cxr_edge.runtime.dataset`): splitting, hashing, and decoding
through the runtime loader.

Images are decoded and resized exactly as the runtime does it (`cxr_edge.runtime.preprocess`), once, into memory;
training augments those arrays. Unreadable files are listed and counted, never silently dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..runtime.contract import Contract
from ..runtime.dataset import CLASS_NAMES, DatasetError, Sample
from ..runtime.model_file import file_sha256
from ..runtime.preprocess import load_many

__all__ = [
    "stratified_split",
    "file_sha256",
    "manifest_hash",
    "load_resized",
]


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
    """Decode and resize every sample with the runtime's loader (`cxr_edge.runtime.preprocess.load_many`).

    Returns:
        images (N x H x W float32 in [0, 1], before normalisation), labels (N,), and the files that could not be
        read with the reason for each.
    """
    images, kept, errors = load_many([s.path for s in samples], contract, workers=workers, on_progress=on_progress)
    labels = np.asarray([samples[i].label for i in kept], np.int64)
    return images, labels, [(e.path, e.reason) for e in errors]
