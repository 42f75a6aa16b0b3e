"""Contract-driven preprocessing: canonical grayscale image -> network input.

Split in two steps so that training can put its augmentation between them and still share both:
`resize` (geometry: input size, resampling, fit) and `to_input` (intensity standardisation, normalisation and
channels). Intensity standardisation comes after augmentation, as at run time: whatever contrast an augmented
image has, the model sees it standardised exactly as it will see a site's images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError
from ..reading.images import LoadedImage, read_image
from .contract import Contract

__all__ = ["resize", "standardize", "to_input", "preprocess", "stack", "load_for_contract", "load_many"]

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


def standardize(resized: np.ndarray, contract: Contract) -> np.ndarray:
    """The contract's per-image intensity standardisation of one resized image or a batch (float32 in [0, 1])."""
    if contract.intensity == "none":
        return resized
    if resized.ndim == 3:
        return np.stack([standardize(image, contract) for image in resized])
    levels = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)
    return cv2.equalizeHist(levels).astype(np.float32) * np.float32(1 / 255)


def to_input(resized: np.ndarray, contract: Contract) -> np.ndarray:
    """Standardise and normalise resized images and repeat them into the contract's channels.

    Args:
        resized: one image (H x W -> C x H x W) or a batch of them (N x H x W -> N x C x H x W), float32.
        contract: intensity standardisation, mean, standard deviation and channel count.
    """
    resized = standardize(resized, contract)
    mean = np.asarray(contract.mean, np.float32)[:, None, None]
    inv_std = (1.0 / np.asarray(contract.std, np.float32))[:, None, None]
    return ((resized[..., None, :, :] - mean) * inv_std).astype(np.float32, copy=False)


def preprocess(pixels: np.ndarray, contract: Contract) -> np.ndarray:
    """`resize` then `to_input`: the exact transform the model was trained with."""
    return to_input(resize(pixels, contract), contract)


def stack(inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Batch preprocessed inputs into one contiguous N x C x H x W array."""
    return np.ascontiguousarray(np.stack(inputs, axis=0), dtype=np.float32)


def load_many(paths: Sequence[str | Path], contract: Contract, *, workers: int | None = None,
              on_progress: Callable[[], None] | None = None) -> tuple[np.ndarray, list[int], list[ImageError]]:
    """Decode and resize many files for one contract, in a thread pool (the decoders release the GIL).

    For the jobs that hold a whole set in memory: training, calibration and accuracy figures. Unreadable files
    come back as errors beside the images, never silently dropped.

    Args:
        paths: the files, in the order wanted.
        contract: decides decoding scale and geometry (not normalisation: training augments in between).
        workers: decoding threads (default: every core).
        on_progress: called once per file, readable or not.

    Returns:
        resized images (N x H x W float32, before `to_input`), the index in `paths` of each, and the errors.
    """

    def decode(path: str | Path) -> np.ndarray | ImageError:
        try:
            return resize(load_for_contract(path, contract).pixels, contract)
        except ImageError as exc:
            return exc
        finally:
            if on_progress is not None:
                on_progress()

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(decode, paths))
    kept = [i for i, r in enumerate(results) if not isinstance(r, ImageError)]
    errors = [r for r in results if isinstance(r, ImageError)]
    height, width = contract.input_size
    images = np.stack([results[i] for i in kept]) if kept else np.zeros((0, height, width), np.float32)
    return images, kept, errors
