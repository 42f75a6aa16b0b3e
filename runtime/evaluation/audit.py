"""The shortcut audit: does a model look at the lungs, or at where an image came from?

In the shared data each class-and-age cell comes from one hospital or collection, so a model can score well by
recognising the source (its borders, markers, resolution, contrast) instead of the disease. Three measurements,
over a labelled folder whose images keep their source (`cxr_edge.runtime.evaluation.dataset`):

1. **Border-only probe**: the central lung box blacked out, how often does the predicted label survive? A model
   that reads the lungs should mostly change its mind; a model that reads borders and text keeps it. What the
   blacked-out images are called is reported too: where a black box itself looks like disease to the model,
   the label of that class survives for that reason, not because of the borders.
2. **Source probe**: how well does a linear classifier on the model's pooled features tell the sources apart
   (cross-validated by patient, AUROC)? Reported within each class that has two or more sources, where the
   answer is not simply the label (two COVID-19 collections, say); near 0.5 means the features carry little of
   the source, near 1.0 that the source is written all over them.
3. **Heatmap placement**: how often does the centre of mass of the predicted class's activation map fall inside
   the central lung box?
4. **Acquisition stress**: another hospital's detector, post-processing and file history, imitated by noise,
   edge enhancement, blur, gamma and contrast changes on the same images: how often does the label hold, per
   source? A model that learned one source's smooth files or contrast changes its mind here.
Everything runs on the edge install (numpy; the probe is a small logistic regression written here because the
runtime carries no scikit-learn).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import CxrEdgeError
from ..model.classifier import Classifier
from ..model.model_file import CAM, FEATURES, PROBABILITIES
from ..model.preprocess import load_many, to_input
from .dataset import Sample, scan_dataset

__all__ = ["LUNG_BOX", "STRESSES", "run_audit", "auroc", "render_audit"]

LUNG_BOX = (0.10, 0.90, 0.12, 0.88)
"""(top, bottom, left, right) of the central box, as shares of the height and width, where the lungs of a
frontal chest film lie; outside it are the borders, shoulders, markers and text."""


def _noise(image: np.ndarray) -> np.ndarray:
    return image + np.random.default_rng(0).normal(0, 0.03, image.shape).astype(np.float32)


STRESSES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "noise 3 %": _noise,
    "edge enhancement": lambda image: image + (image - cv2.GaussianBlur(image, (0, 0), 2.0)),
    "blur": lambda image: cv2.GaussianBlur(image, (0, 0), 1.5),
    "gamma 0.7": lambda image: np.clip(image, 0, 1) ** np.float32(0.7),
    "gamma 1.5": lambda image: np.clip(image, 0, 1) ** np.float32(1.5),
    "contrast 0.7": lambda image: (image - image.mean()) * np.float32(0.7) + image.mean(),
}
"""Changes of acquisition, applied to resized images (then clipped to [0, 1])."""


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN without both classes."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = np.asarray(scores)[order]
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 300) -> Callable[[np.ndarray], np.ndarray]:
    """Binary L2 logistic regression by gradient descent on standardised features; returns a scorer."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    w, b = np.zeros(z.shape[1]), 0.0
    rate = 1.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        gradient = z.T @ (p - y) / len(y) + l2 * w
        w -= rate * gradient
        b -= rate * float(np.mean(p - y))
    return lambda other: ((other - mean) / std) @ w + b


def _source_probe(features: np.ndarray, samples: Sequence[Sample], findings: Sequence[str],
                  folds: int = 5) -> dict[str, dict]:
    """Per finding with two or more sources: cross-validated (by patient) AUROC of telling each source from the
    rest (a model that can tell them apart within one finding can use the source as a shortcut)."""
    results = {}
    labels = np.asarray(findings)
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == label)
        sources = sorted({samples[i].source for i in members})
        if len(sources) < 2:
            continue
        groups = sorted({samples[i].group for i in members})
        fold_of = {g: k % folds for k, g in enumerate(np.random.default_rng(0).permutation(groups))}
        fold = np.asarray([fold_of[samples[i].group] for i in members])
        x = features[members]
        per_source = {}
        for source in sources:
            y = np.asarray([samples[i].source == source for i in members], float)
            scores = np.zeros(len(members))
            for k in range(folds):
                test = fold == k
                if test.any() and len(set(y[~test])) == 2:
                    scores[test] = _logistic(x[~test], y[~test])(x[test])
            per_source[source] = {"images": int(y.sum()), "auroc": auroc(scores, y.astype(bool))}
        results[str(label)] = per_source
    return results


def _centre_in_box(cam: np.ndarray) -> bool:
    weights = np.clip(cam - cam.mean(), 0, None)
    if weights.sum() <= 0:
        weights = np.ones_like(cam)
    h, w = cam.shape
    rows, cols = np.mgrid[0:h, 0:w]
    y = ((rows + 0.5) * weights).sum() / weights.sum() / h
    x = ((cols + 0.5) * weights).sum() / weights.sum() / w
    top, bottom, left, right = LUNG_BOX
    return bool(top <= y <= bottom and left <= x <= right)


def run_audit(classifier: Classifier, data_dirs: Sequence[Path], *, batch_size: int = 32) -> dict:
    """The three measurements over labelled folders, overall and per source.

    Raises:
        CxrEdgeError: the model lacks the ``features`` or ``cam`` output the audit needs, or nothing is readable.
    """
    missing = [name for name in (FEATURES, CAM) if name not in classifier.backend.io.outputs]
    if missing:
        raise CxrEdgeError(f"{classifier.path}: the audit needs the model outputs {', '.join(missing)}; re-export it")
    dataset = scan_dataset(data_dirs, classifier.contract.class_names)
    contract = classifier.contract
    images, kept, errors = load_many([s.path for s in dataset.samples], contract)
    if not kept:
        raise CxrEdgeError("none of the labelled images could be read")
    samples = [dataset.samples[i] for i in kept]
    height, width = contract.input_size
    top, bottom, left, right = LUNG_BOX
    masked = images.copy()
    masked[:, int(top * height):int(bottom * height), int(left * width):int(right * width)] = 0.0
    outputs: dict[str, list] = {"plain": [], "masked": []}
    for kind, source in (("plain", images), ("masked", masked)):
        for start in range(0, len(source), batch_size):
            batch = to_input(source[start:start + batch_size], contract)
            outputs[kind].append(classifier.backend.run(batch, (PROBABILITIES, FEATURES, CAM)))
    stressed = {}
    for name, change in STRESSES.items():
        altered = np.clip(np.stack([change(image) for image in images]), 0, 1).astype(np.float32)
        stressed[name] = np.concatenate([classifier.backend.run(to_input(altered[i:i + batch_size], contract))[
            PROBABILITIES] for i in range(0, len(altered), batch_size)]).argmax(axis=1)
    plain = {name: np.concatenate([o[name] for o in outputs["plain"]]) for name in (PROBABILITIES, FEATURES, CAM)}
    masked_pred = np.concatenate([o[PROBABILITIES] for o in outputs["masked"]]).argmax(axis=1)
    predicted = plain[PROBABILITIES].argmax(axis=1)
    survives = predicted == masked_pred
    in_box = np.asarray([_centre_in_box(plain[CAM][i, predicted[i]]) for i in range(len(samples))])
    called = {"as given": predicted, "lungs blacked out": masked_pred} | stressed
    names = classifier.contract.class_names

    def figures(mask: np.ndarray) -> dict:
        return {"images": int(mask.sum()), "label_survives_masking": float(survives[mask].mean()),
                "heatmap_in_lung_box": float(in_box[mask].mean()),
                "label_holds_under": {name: float(np.mean(pred[mask] == predicted[mask]))
                                      for name, pred in stressed.items()},
                "called": {name: {c: int(np.sum(pred[mask] == i)) for i, c in enumerate(names)}
                           for name, pred in called.items()}}

    by_source = {source: figures(np.asarray([s.source == source for s in samples]))
                 for source in sorted({s.source for s in samples})}
    by_view = {view: figures(np.asarray([f"{s.source}/{s.view}" == view for s in samples]))
               for view in sorted({f"{s.source}/{s.view}" for s in samples if s.view != "unknown"})}
    return {"images": len(samples), "unreadable": [str(e) for e in errors], "lung_box": list(LUNG_BOX),
            "label_survives_masking": float(survives.mean()), "heatmap_in_lung_box": float(in_box.mean()),
            "by_source": by_source, "by_view": by_view, "source_probe_auroc": _source_probe(
                plain[FEATURES], samples, [classifier.contract.finding_of(s.classes[0]) for s in samples]),
            "model": str(classifier.path)}


def render_audit(result: dict, console: object) -> None:
    """The audit as two tables: per source, and the source probe within each class."""
    from rich.table import Table

    table = Table(title=f"shortcut audit of {Path(result['model']).name} ({result['images']} images)",
                  title_justify="left")
    for column in ("source", "images", "label kept, lungs blacked out", "heatmap centre in lung box"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for source, row in result["by_source"].items():
        table.add_row(source, str(row["images"]), f"{row['label_survives_masking']:.0%}",
                      f"{row['heatmap_in_lung_box']:.0%}")
    table.add_section()
    table.add_row("all", str(result["images"]), f"{result['label_survives_masking']:.0%}",
                  f"{result['heatmap_in_lung_box']:.0%}")
    console.print(table)
    stress = Table(title="label kept under acquisition changes, per source", title_justify="left")
    names = list(STRESSES)
    stress.add_column("source")
    for name in names:
        stress.add_column(name, justify="right")
    for source, row in result["by_source"].items():
        stress.add_row(source, *(f"{row['label_holds_under'][name]:.0%}" for name in names))
    console.print(stress)
    probe = Table(title="can the features tell sources apart within a class? (AUROC, 0.5 = no)", title_justify="left")
    for column in ("class", "source", "images", "AUROC"):
        probe.add_column(column, justify="left" if column in ("class", "source") else "right")
    for name, sources in result["source_probe_auroc"].items():
        for source, row in sources.items():
            probe.add_row(name, source, str(row["images"]), f"{row['auroc']:.2f}")
    console.print(probe)
