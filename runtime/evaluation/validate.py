"""A site's acceptance check before go-live: the model on a few hundred of the site's own labelled films.

`validate_site` classifies the films as the live modes would (gate on), then reports what a site needs to decide:
the figures `bench --data` gives (accuracy, per finding, per label-source-age cell, with 95 % intervals over
patients), the confusion matrix of the findings, the calibration before and after refitting a second
temperature on the site's films, the abstention threshold refitted the same way, how many films the gate
refused, how far the site's films lie from the model's validation films (the gate's score), and a verdict
against the figures of the model card (the release record beside a shipped model). `write_site_model` writes
the refitted calibration into a copy of the model, never into the model given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrEdgeError
from ..model.classifier import Classifier
from ..model.model_file import GATE_KEY
from .bench import label_figures
from .calibration import abstention, expected_calibration_error, finding_confidence, fit_scale, partial_nll, scaled
from .dataset import DatasetError, scan_dataset

__all__ = ["validate_site", "write_site_model", "verdict_lines", "labelled_probabilities", "fit_calibration"]


def validate_site(classifier: Classifier, data_dirs: Sequence[Path], *, engine_figures: str = "ort") -> dict[str, Any]:
    """Every figure of the acceptance check (see the module); `DatasetError` when the folders hold no labels."""
    if classifier.contract.multi_label:
        raise CxrEdgeError(f"{classifier.path}: a multi-label model has no card of class figures to check against; "
                           "`cxr-edge bench --model MODEL --data FOLDERS` (one folder per finding, and no_finding) "
                           "gives each finding's AUROC, sensitivity and specificity at its operating point")
    samples, probabilities, results = labelled_probabilities(classifier, data_dirs)
    statuses = [r.status for r in results]
    report = {"images": len(results), "unreadable": len(results) - len(samples),
              "status": {k: statuses.count(k) for k in ("classified", "uncertain", "rejected", "failed")},
              "figures": label_figures(samples, probabilities, classifier.contract),
              "calibration": fit_calibration(samples, probabilities, classifier),
              "distance": _distance([r for r in results if r.probabilities is not None], classifier.path)}
    report["verdict"] = verdict_lines(report, _card_figures(classifier.path, engine_figures))
    return report


def labelled_probabilities(classifier: Classifier,
                           data_dirs: Sequence[Path]) -> tuple[list[Any], np.ndarray, list[Any]]:
    """The labelled films of class folders named as the model's classes, the probabilities of those that could be
    read (rows in class order) and every result; `DatasetError` when the folders hold no labels."""
    names = classifier.contract.class_names
    dataset = scan_dataset(data_dirs, names)
    if not dataset.samples:
        raise DatasetError(f"{', '.join(map(str, data_dirs))}: no labelled films (expected class folders such as "
                           f"{', '.join(names[:2])}, or a pneumonia folder for a coarse label)")
    results = classifier.predict([s.path for s in dataset.samples], batch_size=16)
    read = [(s, r) for s, r in zip(dataset.samples, results, strict=True) if r.probabilities is not None]
    if not read:
        raise CxrEdgeError(f"none of the {len(dataset.samples)} labelled films could be read")
    probabilities = np.array([[r.probabilities[n] for n in names] for _, r in read])
    return [s for s, _ in read], probabilities, results


def fit_calibration(samples: Sequence[Any], probabilities: np.ndarray, classifier: Classifier) -> dict[str, Any]:
    """Calibration before and after a second temperature fitted on these films, and the abstention refitted."""
    contract = classifier.contract
    allowed = np.array([[name in s.classes for name in contract.class_names] for s in samples], np.float64)
    scale = fit_scale(probabilities, allowed)
    after = scaled(probabilities, scale)
    truth = [contract.finding_of(s.classes[0]) for s in samples]
    exact = np.array([not s.coarse for s in samples])
    labels = np.array([contract.class_names.index(s.label) if not s.coarse else -1 for s in samples])

    def figures(p: np.ndarray) -> dict[str, float]:
        confidence = finding_confidence(p, contract)
        hits = np.array([contract.finding(dict(zip(contract.class_names, row, strict=True)))[0] == t
                         for row, t in zip(p, truth, strict=True)])
        return {"nll": partial_nll(p, allowed), "ece": expected_calibration_error(p[exact], labels[exact])
                if exact.any() else float("nan"), "abstain": abstention(confidence, hits)[1]}

    policy = classifier.policy
    return {"scale": round(scale, 4), "temperature_factor": round(1 / scale, 4), "before": figures(probabilities),
            "after": figures(after), "abstain_below_shipped": None if policy is None else policy.abstain_below}


def _distance(results: Sequence[Any], model: Path) -> dict[str, Any]:
    """The site's gate scores (how unlike the training films each film is) beside the validation films'."""
    scores = np.array([r.gate["score"] for r in results if r.gate], np.float64)
    found: dict[str, Any] = {"films": int(scores.size)}
    if scores.size:
        found |= {"median": float(np.median(scores)), "p90": float(np.quantile(scores, 0.9)),
                  "threshold": float(results[0].gate["threshold"]) if results[0].gate else None}
        found["over_threshold"] = float(np.mean(scores > found["threshold"])) if found["threshold"] else None
    release = _release(model)
    if release is not None:
        found["validation_refused"] = release.get("reliability", {}).get("gate_refused_share")
    return found


def _release(model: Path) -> dict[str, Any] | None:
    """The release record beside a shipped model (its model card's figures), or None."""
    record = Path(model).with_name("release.json")
    try:
        return json.loads(record.read_text()) if record.is_file() else None
    except (OSError, ValueError):
        return None


def _card_figures(model: Path, engine: str) -> dict[str, Any] | None:
    release = _release(model)
    if release is None:
        return None
    evaluations = release.get("evaluations", {})
    return evaluations.get(engine) or next(iter(evaluations.values()), None)


def verdict_lines(report: dict[str, Any], card: dict[str, Any] | None) -> list[str]:
    """Per finding, the site's recall against the card's interval; what to do about it, in words."""
    site = report["figures"]["findings"]["per_finding"]
    if card is None or "findings" not in card:
        return ["no model card figures to compare with (a model without its release record): judge the figures "
                "above against the site's own needs"]
    lines = []
    for name, row in site.items():
        shipped = card["findings"]["per_finding"].get(name)
        if not row["images"] or shipped is None or not shipped.get("images"):
            continue
        low = shipped["ci95"][0]
        words = (f"{name} recall {row['recall']:.2f} ({row['ci95'][0]:.2f}-{row['ci95'][1]:.2f}) on "
                 f"{row['images']} films")
        if row["ci95"][1] < low:
            lines.append(f"{words}, below the card's interval from {low:.2f}: do not deploy without retraining")
        elif row["recall"] < low:
            lines.append(f"{words}, under the card's interval from {low:.2f} but not clearly: collect more films")
        else:
            lines.append(f"{words}: within or above the card's ({shipped['recall']:.2f})")
    refused = report["status"]["rejected"] / max(report["images"], 1)
    if refused > 0.05:
        lines.append(f"the gate refused {refused:.0%} of the site's chest films: the site's images differ from "
                     "the training films; check them before go-live")
    return lines


def write_site_model(model: Path, out: Path, calibration: dict[str, Any]) -> Path:
    """A copy of the model (OpenVINO IR) whose gate policy carries the site's scale and abstention threshold."""
    import openvino as ov

    from ..model.gate import GatePolicy

    out = Path(out)
    if out.suffix != ".xml":
        raise CxrEdgeError(f"{out}: the site model is written as OpenVINO IR; name it .xml")
    if out.resolve() == Path(model).resolve() or out.exists():
        raise CxrEdgeError(f"{out}: exists; a site model never replaces a file")
    core = ov.Core()
    network = core.read_model(str(model))
    from ..model.backends.openvino import read_metadata

    metadata = read_metadata(network)
    policy = GatePolicy.from_metadata(metadata) or GatePolicy()
    policy = replace(policy, site_scale=calibration["scale"], fitted_on=f"{policy.fitted_on}; site films",
                     abstain_below=calibration["after"]["abstain"]["abstain_below"], abstain_on="finding")
    for key, value in (metadata | {GATE_KEY: json.dumps(asdict(policy), sort_keys=True)}).items():
        network.set_rt_info(value, ["cxr_edge", key])
    ov.save_model(network, str(out), compress_to_fp16=False)
    return out
