"""Classification metrics in plain numpy, so that the edge (bench, quantisation reports) needs no scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["confusion_matrix", "classification_report", "render_report", "bootstrap_interval", "group_report",
           "group_hits", "finding_report"]


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts with true classes in rows and predicted classes in columns."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return matrix


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision, recall, F1 and support.

    A class that is never predicted has precision 0 (not NaN), so macro-F1 punishes a collapsed model.
    """
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    true_pos = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    present = support > 0
    total = int(matrix.sum())
    return {
        "accuracy": float(true_pos.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
    }


def render_report(report: dict, console: Any, title: str) -> None:
    """A `classification_report` as a table: per-class precision, recall, F1 and support, then the totals."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("class", "precision", "recall", "F1", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in report["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    table.add_section()
    total = sum(r["support"] for r in report["per_class"].values())
    table.add_row("accuracy", "", "", f"{report['accuracy']:.3f}", str(total))
    table.add_row("macro-F1", "", "", f"{report['macro_f1']:.3f}", str(total))
    console.print(table)


def bootstrap_interval(hits: Sequence[bool] | np.ndarray, clusters: Sequence[str] | None = None, *,
                       level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a proportion, resampling whole clusters (patients) with replacement.

    Serial films of one patient are not independent evidence; resampling patients rather than images keeps the
    interval honest about that. Without clusters every item is its own.
    """
    hits = np.asarray(hits, np.float64)
    if hits.size == 0:
        return (float("nan"), float("nan"))
    keys = np.asarray(clusters if clusters is not None else np.arange(hits.size).astype(str))
    names, index = np.unique(keys, return_inverse=True)
    sums = np.bincount(index, weights=hits, minlength=len(names))
    sizes = np.bincount(index, minlength=len(names)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(resamples, len(names)))
    shares = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(shares, tail)), float(np.percentile(shares, 100 - tail))


def group_report(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str], class_names: Sequence[str],
                 clusters: Sequence[str] | None = None) -> dict[str, dict]:
    """`group_hits` for exact labels given as class indices."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return group_hits(y_true == y_pred, [class_names[i] for i in y_pred], groups, class_names, clusters)


def group_hits(hits: Sequence[bool], called: Sequence[str], groups: Sequence[str], names: Sequence[str],
               clusters: Sequence[str] | None = None) -> dict[str, dict]:
    """Per group (a label/source/age cell, say): images, the share right with its bootstrap interval over
    patients, and what the images were called.

    Args:
        hits: whether each image was right (for a coarse label: called one of the classes it allows).
        called: what each image was called (a class, or a finding).
        groups: the group of each image.
        names: every name `called` can hold, in the order to report them.
        clusters: the patient of each image (for the interval), if known.
    """
    hits, called, groups = np.asarray(hits, bool), np.asarray(called), np.asarray(groups)
    clusters = np.asarray(clusters) if clusters is not None else None
    report = {}
    for name in sorted(set(groups.tolist())):
        mask = groups == name
        low, high = bootstrap_interval(hits[mask], clusters[mask] if clusters is not None else None)
        report[name] = {"images": int(mask.sum()), "accuracy": float(hits[mask].mean()), "ci95": [low, high],
                        "called": {c: int(np.sum(called[mask] == c)) for c in names}}
    return report


def finding_report(truth: Sequence[str], called: Sequence[str], names: Sequence[str],
                   clusters: Sequence[str] | None = None) -> dict:
    """Findings (normal, COVID-19, pneumonia, ...) against the truth: per finding, recall with its interval over
    patients and precision, the share right overall, and the confusion matrix (truth in rows)."""
    truth, called = np.asarray(truth), np.asarray(called)
    clusters = np.asarray(clusters) if clusters is not None else None
    index = {name: i for i, name in enumerate(names)}
    matrix = confusion_matrix([index[t] for t in truth], [index[c] for c in called], len(names))
    per = {}
    for name in names:
        mask = truth == name
        hits = called[mask] == name
        low, high = bootstrap_interval(hits, clusters[mask] if clusters is not None else None)
        predicted = int(np.sum(called == name))
        per[name] = {"images": int(mask.sum()), "recall": float(hits.mean()) if mask.any() else float("nan"),
                     "ci95": [low, high], "precision": float(np.sum(hits) / predicted) if predicted else 0.0}
    return {"accuracy": float(np.mean(truth == called)) if truth.size else 0.0, "per_finding": per,
            "confusion_matrix": matrix.tolist(), "names": list(names)}
