"""What each result says about the image itself, for monitoring a site without labels (`monitoring.drift`).

Three groups, each computed from what the pipeline already holds, at a few microseconds per image:

- image facts: the stored size and bit depth, and the brightness, spread and edge strength of the image the
  network sees (its resized grayscale, before intensity standardisation, which would erase brightness and
  contrast changes: exactly what a new detector or processing brings);
- model facts: the gate's score, how upright the orientation head finds the film, and a fixed 8-dimensional
  projection of the pooled features (a seeded random orthonormal map: the same for every copy of a model, needs
  nothing stored, and keeps distances between images within a few per cent on average);
- device facts from a DICOM header: manufacturer, model, software versions, pixel spacing, photometric
  interpretation, transfer syntax, kVp. Never a patient identifier.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import cv2
import numpy as np

from ..reading.header import HeaderFacts

__all__ = ["image_facts", "model_facts", "device_facts", "PROJECTION_DIMS", "projection"]

PROJECTION_DIMS = 8
"""Dimensions the pooled features are projected to: enough for a multivariate distance, small in a record."""


def image_facts(resized: np.ndarray, stored_shape: tuple[int, int] | None, bits: int | None) -> dict[str, Any]:
    """Brightness, spread and edge strength of the network's image (H x W in [0, 1]), and the stored size."""
    mean, spread = cv2.meanStdDev(resized)
    edges = float(np.mean(np.abs(cv2.Laplacian(resized, cv2.CV_32F))))
    height, width = stored_shape or resized.shape[:2]
    return {"mean": round(float(mean[0, 0]), 5), "spread": round(float(spread[0, 0]), 5), "edges": round(edges, 5),
            "width": int(width), "height": int(height), "bits": bits}


def model_facts(gate_score: float | None, orientation: np.ndarray | None,
                features: np.ndarray | None) -> dict[str, Any]:
    """The gate's score, the upright share of the orientation head, the feature projection (each None if absent)."""
    upright = None
    if orientation is not None and orientation.size and np.isfinite(orientation).all():
        upright = round(float(np.ravel(orientation)[0]), 5)  # the head's probability of its first column, upright
    return {"gate_score": None if gate_score is None else round(float(gate_score), 5), "upright": upright,
            "projection": None if features is None else [round(float(v), 5) for v in projection(features)]}


def projection(features: np.ndarray) -> np.ndarray:
    """The pooled features (a vector) mapped to `PROJECTION_DIMS` by a fixed orthonormal matrix."""
    vector = np.asarray(features, np.float32).ravel()
    return _matrix(vector.size) @ vector


@cache
def _matrix(size: int) -> np.ndarray:
    """Seeded: every runtime and every benchmark projects a model's features the same way."""
    random = np.random.default_rng(20261206).standard_normal((size, PROJECTION_DIMS))
    basis, _ = np.linalg.qr(random)
    return np.ascontiguousarray(basis.T, dtype=np.float32)


def device_facts(header: HeaderFacts | None) -> dict[str, Any] | None:
    """What identifies the acquiring device and its processing; None for a file without a DICOM header."""
    if header is None:
        return None
    return {"manufacturer": header.manufacturer, "model": header.model_name, "software": header.software,
            "pixel_spacing": header.pixel_spacing, "photometric": header.photometric,
            "transfer_syntax": header.transfer_syntax, "kvp": header.kvp}
