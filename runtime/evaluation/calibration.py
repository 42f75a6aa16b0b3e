"""Calibration figures shared by training and a site's acceptance check: expected calibration error, the
probability of the top finding, the abstention threshold, and a second temperature fitted on labelled films.

numpy only, so that the edge (`cxr-edge validate`) refits what the build side fitted (`export.reliability`) with
the same definitions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..model.contract import Contract

__all__ = ["ABSTAIN_SHARE", "expected_calibration_error", "finding_confidence", "abstention", "fit_scale",
           "scaled", "partial_nll"]

ABSTAIN_SHARE = 0.1
"""Share of the validation images, the least sure, that the abstention threshold flags as uncertain."""


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the bins' sizes."""
    confidence = probabilities.max(axis=1)
    hits = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(hits[inside].mean() - confidence[inside].mean())
    return float(error)


def finding_confidence(probabilities: np.ndarray, contract: Contract) -> np.ndarray:
    """Per image, the probability of its most probable finding (a finding sums its classes)."""
    return np.asarray([contract.finding(dict(zip(contract.class_names, row, strict=True)))[1]
                       for row in probabilities])


def abstention(confidence: np.ndarray, hits: np.ndarray) -> tuple[float, dict[str, Any]]:
    """The threshold that flags the `ABSTAIN_SHARE` least sure validation images, and the error rates on both
    sides of it (a threshold that flags nothing, or flags where errors are no likelier, says nothing)."""
    threshold = float(np.quantile(confidence, ABSTAIN_SHARE))
    flagged = confidence < threshold
    figures = {"abstain_below": threshold, "uncertain_share": float(flagged.mean()),
               "error_when_uncertain": float(1 - hits[flagged].mean()) if flagged.any() else None,
               "error_when_not_uncertain": float(1 - hits[~flagged].mean()) if (~flagged).any() else None,
               "accuracy_when_not_uncertain": float(hits[~flagged].mean()) if (~flagged).any() else None}
    return threshold, figures




def scaled(probabilities: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale x log p) per row: the probabilities under a second temperature 1 / scale."""
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) * scale
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def partial_nll(probabilities: np.ndarray, allowed: np.ndarray) -> float:
    """Mean negative log of the probability each image's label allows (a coarse label sums its classes)."""
    return float(-np.mean(np.log(np.clip((probabilities * allowed).sum(axis=1), 1e-12, None))))


def fit_scale(probabilities: np.ndarray, allowed: np.ndarray) -> float:
    """The scale (0.1-10) minimising the partial negative log-likelihood, by golden-section search on its log:
    one parameter, a unimodal loss, no optimiser library needed."""
    low, high = math.log(0.1), math.log(10.0)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if partial_nll(scaled(probabilities, math.exp(a)), allowed) < partial_nll(
                scaled(probabilities, math.exp(b)), allowed):
            high = b
        else:
            low = a
    return math.exp((low + high) / 2)
