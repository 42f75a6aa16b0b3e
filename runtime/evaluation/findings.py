"""Independent findings (multi-label models): labelled folders, per-finding figures and operating points.

A multi-label model gives each finding its own probability; a finding is positive at or above its operating
point. The labels here come from folders, one per finding (a film in ``effusion/`` shows an effusion), plus
``no_finding/`` for films with none of them. A folder names one finding per film, so a film is taken as negative
for every other finding: where films show several findings, state the operating points from a better-labelled
set instead. An operating point is the Youden point (largest sensitivity + specificity - 1) or the highest
threshold that keeps a stated sensitivity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CxrEdgeError
from ..reading.images import IMAGE_SUFFIXES
from .audit import auroc
from .metrics import bootstrap_interval

__all__ = ["NO_FINDING", "FindingLabels", "read_finding_folders", "operating_point", "finding_figures"]

NO_FINDING = "no_finding"
"""The folder of films negative for every finding."""


@dataclass(frozen=True)
class FindingLabels:
    """Films and, per film, whether each finding (in the model's order) is present."""

    paths: tuple[Path, ...]
    present: np.ndarray  # films x findings, bool


def read_finding_folders(folders: Sequence[Path], findings: Sequence[str]) -> FindingLabels:
    """Films under ``<folder>/<finding>/`` and ``<folder>/no_finding/``; `CxrEdgeError` when there are none."""
    paths: list[Path] = []
    rows: list[list[bool]] = []
    for folder in folders:
        for name in [*findings, NO_FINDING]:
            for path in sorted((Path(folder) / name).glob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(path)
                    rows.append([name == finding for finding in findings])
    if not paths:
        raise CxrEdgeError(f"{', '.join(map(str, folders))}: no labelled films (expected folders named as the "
                           f"findings, such as {', '.join(findings[:2])}, and {NO_FINDING})")
    return FindingLabels(tuple(paths), np.array(rows, bool).reshape(len(paths), len(findings)))


def operating_point(scores: np.ndarray, present: np.ndarray, sensitivity: float | None = None) -> float:
    """The threshold (a finding is positive at or above it): the Youden point, or with `sensitivity` the highest
    threshold whose sensitivity reaches it. 0.5 for a finding without both positive and negative films."""
    positives, negatives = scores[present], scores[~present]
    if not len(positives) or not len(negatives):
        return 0.5
    candidates = np.unique(scores)
    sens = np.array([(positives >= t).mean() for t in candidates])
    spec = np.array([(negatives < t).mean() for t in candidates])
    if sensitivity is not None:
        reaching = np.nonzero(sens >= sensitivity)[0]
        index = int(reaching.max()) if len(reaching) else 0
    else:
        index = int(np.argmax(sens + spec - 1))
    return float(np.clip(candidates[index], 1e-6, 1 - 1e-6))


def finding_figures(scores: np.ndarray, present: np.ndarray, points: Sequence[float],
                    findings: Sequence[str]) -> dict[str, dict[str, object]]:
    """Per finding: films with and without it, AUROC, and sensitivity and specificity at its operating point with
    95 % bootstrap intervals."""
    figures: dict[str, dict[str, object]] = {}
    for column, (name, point) in enumerate(zip(findings, points, strict=True)):
        score, truth = scores[:, column], present[:, column]
        called = score >= point
        row: dict[str, object] = {"with": int(truth.sum()), "without": int((~truth).sum()),
                                  "auroc": auroc(score, truth), "operating_point": float(point)}
        for key, hits in (("sensitivity", called[truth]), ("specificity", ~called[~truth])):
            row[key] = float(hits.mean()) if len(hits) else None
            row[f"{key}_interval"] = bootstrap_interval(hits) if len(hits) else None
        figures[name] = row
    return figures
