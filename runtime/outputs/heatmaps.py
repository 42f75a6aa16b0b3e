"""Class activation maps drawn over the X-ray, so a user can see what the model looked at.

The model computes the maps itself (its last feature map projected by the classifier weights); here they are
only upsampled, normalised and blended, with OpenCV.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

__all__ = ["overlay", "write_overlay", "overlay_path"]


def overlay(image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """A BGR uint8 picture: the grayscale X-ray with the activation map as a heatmap on top.

    Args:
        image: canonical grayscale image (2-D float32 in [0, 1]).
        cam: one class's activation map at model resolution (h x w), any scale.
        alpha: heatmap opacity.
    """
    height, width = image.shape
    heat = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    low, high = float(heat.min()), float(heat.max())
    heat = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    colour = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
    gray = cv2.cvtColor(np.uint8(np.clip(image, 0, 1) * 255), cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(colour, alpha, gray, 1 - alpha, 0)


def overlay_path(folder: Path, source: str) -> Path:
    """``<folder>/<input name>.cam.png``: named after the input so a user can pair them."""
    return folder / f"{Path(source).name}.cam.png"


def write_overlay(folder: Path, source: str, picture: np.ndarray, protected: set[Path] | None = None) -> Path:
    """Write a PNG overlay without ever replacing an existing file or an input.

    A taken name gets ``-1``, ``-2``, ... before ``.cam.png``; the file is created exclusively (O_EXCL), so two
    writers cannot end up on the same name either.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise OSError(f"cannot encode the overlay for {source}")
    target = overlay_path(folder, source)
    stem = target.name[: -len(".cam.png")]
    protected = {p.resolve() for p in (protected or set())}
    for attempt in range(10_000):
        candidate = target if attempt == 0 else folder / f"{stem}-{attempt}.cam.png"
        if candidate.resolve() in protected:
            continue
        try:
            descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(encoded.tobytes())
        return candidate
    raise OSError(f"no free overlay name for {source} in {folder}")
