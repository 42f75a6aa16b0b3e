"""Class activation maps drawn over the X-ray, so a user can see what the model looked at.

The model computes the maps itself (its last feature map projected by the classifier weights); here they are
only upsampled, normalised and blended, with OpenCV. `heatmap_picture` is what every mode writes and shows: the
overlay with "NOT FOR DIAGNOSTIC USE", what was found, and a colour scale, burned in, so that any viewer shows them.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["overlay", "heatmap_picture", "BURNED_IN_WARNING"]

BURNED_IN_WARNING = "NOT FOR DIAGNOSTIC USE"


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


def heatmap_picture(display: np.ndarray, cam: np.ndarray, caption: str) -> np.ndarray:
    """RGB uint8: a black band with the warning and `caption` above the overlay of `cam` on `display`, and a colour
    scale (the map's lowest to highest activation, scaled per image) at its right."""
    picture = overlay(display, cam)
    height, width = picture.shape[:2]
    scale = max(width / 900, 0.35)
    line = int(34 * scale)
    band = np.zeros((2 * line + int(12 * scale), width, 3), np.uint8)
    for row, (text, colour) in enumerate(((BURNED_IN_WARNING, (0, 0, 255)), (caption, (255, 255, 255)))):
        cv2.putText(band, text, (int(8 * scale), (row + 1) * line), cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, colour,
                    max(1, int(2 * scale)), cv2.LINE_AA)
    body = np.vstack([band, picture])
    return cv2.cvtColor(np.hstack([body, _colour_scale(body.shape[0], band.shape[0], scale)]), cv2.COLOR_BGR2RGB)


def _colour_scale(height: int, top: int, scale: float) -> np.ndarray:
    """A strip of the overlay's colour map, highest at the top, labelled ``high`` and ``low``."""
    width = max(24, int(70 * scale))
    strip = np.zeros((height, width, 3), np.uint8)
    bar_top, bar_bottom = top + int(30 * scale), height - int(30 * scale)
    if bar_bottom - bar_top < 8:
        return strip
    levels = np.linspace(255, 0, bar_bottom - bar_top).astype(np.uint8)[:, None]
    bar = cv2.applyColorMap(np.repeat(levels, width // 3, axis=1), cv2.COLORMAP_JET)
    left = width // 3
    strip[bar_top:bar_bottom, left:left + bar.shape[1]] = bar
    for text, y in (("high", bar_top - int(8 * scale)), ("low", height - int(8 * scale))):
        cv2.putText(strip, text, (2, max(12, y)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (255, 255, 255),
                    max(1, int(scale)), cv2.LINE_AA)
    return strip
