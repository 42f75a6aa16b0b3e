"""Contract-driven preprocessing: canonical grayscale image -> network input.

Split in two steps so that training can put its augmentation between them and still share both:
`resize` (geometry: input size, resampling, fit) and `to_input` (normalisation and channels).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .contract import Contract
from .images import LoadedImage, read_image

__all__ = ["resize", "to_input", "preprocess", "stack", "load_for_contract"]

_INTERPOLATION = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
    "nearest": cv2.INTER_NEAREST,
}


def load_for_contract(path: str | Path, contract: Contract) -> LoadedImage:
    """Decode a file for this contract: large JPEGs decode at reduced scale, never below the input size."""
    return read_image(path, min_size=contract.input_size)


def resize(pixels: np.ndarray, contract: Contract) -> np.ndarray:
    """Bring a canonical image (H x W float32 in [0, 1]) to the contract's input size.

    Args:
        pixels: 2-D float32 image from the shared loader.
        contract: decides size, interpolation and whether the aspect ratio is kept (``pad``) or not.
    """
    height, width = contract.input_size
    interpolation = _INTERPOLATION[contract.resampling]
    if contract.fit == "stretch":
        return cv2.resize(pixels, (width, height), interpolation=interpolation)
    scale = min(height / pixels.shape[0], width / pixels.shape[1])
    new_h = max(1, round(pixels.shape[0] * scale))
    new_w = max(1, round(pixels.shape[1] * scale))
    scaled = cv2.resize(pixels, (new_w, new_h), interpolation=interpolation)
    canvas = np.zeros((height, width), np.float32)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = scaled
    return canvas


def to_input(resized: np.ndarray, contract: Contract) -> np.ndarray:
    """Normalise a resized image and repeat it into the contract's channels: C x H x W float32."""
    mean = np.asarray(contract.mean, np.float32)[:, None, None]
    inv_std = (1.0 / np.asarray(contract.std, np.float32))[:, None, None]
    return ((resized[None, :, :] - mean) * inv_std).astype(np.float32, copy=False)


def preprocess(pixels: np.ndarray, contract: Contract) -> np.ndarray:
    """`resize` then `to_input`: the exact transform the model was trained with."""
    return to_input(resize(pixels, contract), contract)


def stack(inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Batch preprocessed inputs into one contiguous N x C x H x W array."""
    return np.ascontiguousarray(np.stack(inputs, axis=0), dtype=np.float32)
