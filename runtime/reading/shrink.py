"""Fewer pixels as early as possible: the power-of-two reduction every reader applies before the costly steps.

The model reads a few hundred pixels a side; a detector image has two thousand. Formats that can decode at a lower
resolution do (JPEG by DCT scaling, JPEG 2000 by resolution level); for the others the decoded stored values are
area-averaged by the same power of two here, before value mapping (DICOM modality LUT, VOI, inversion; PNG and
TIFF depth scaling), which then touches a sixty-fourth of the pixels. Area averaging commutes with the linear
steps; where a window clips or a VOI LUT bends, the average of mapped values and the mapping of an average part
only at edges of the clip, and the model input stays within the tolerance `tests/runtime/test_codecs.py` states
(measured on real films in ``benchmarks/decode/``).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = ["factor", "shrink", "oversampled", "kept_blocks", "trim", "FULL_DECODE_ENV", "full_size_only", "MIN_SIDE",
           "WINDOW_OVERSAMPLING"]

MIN_SIDE = 32
"""Images smaller than this on either side are refused (`images.check_usable`), and no reduction goes below it:
the network sees 1/32 of its input per feature, and nothing of a chest survives below it (a 16 x 16 DICOM
thumbnail is not a radiograph)."""

FULL_DECODE_ENV = "CXR_EDGE_FULL_DECODE"
"""Set to 1 to read every image at full size (to compare with the reduced reads, or to rule them out)."""

WINDOW_OVERSAMPLING = 2
"""A DICOM image with a VOI window is reduced to no less than this many times the size the caller asks for.

A block mean (or a decoder's reduced scale) followed by the caller's resampling is a slightly wider low-pass than
one resampling of the full image, and a window steepens that difference at every edge by its gain. Measured on
real films at a detector's size (``benchmarks/decode/reduced.md``): reduced down to the input size, windowed films
leave the contract's read tolerance while unwindowed ones, 16-bit PNG and a VOI LUT table stay inside it; at twice
the size windowed films are inside it too, at four times the pixels in the value mapping."""

FACTORS = (8, 4, 2, 1)
"""Power-of-two steps only: the scales libjpeg-turbo decodes at, so every format is reduced alike."""


def factor(height: int, width: int, min_size: tuple[int, int] | None) -> int:
    """The largest of 8, 4, 2 and 1 that keeps the image at least `min_size` (height, width) when divided by it."""
    if min_size is None or full_size_only():
        return 1
    min_h, min_w = max(min_size[0], MIN_SIDE), max(min_size[1], MIN_SIDE)
    return next((f for f in FACTORS if kept_blocks(height, f) >= min_h and kept_blocks(width, f) >= min_w), 1)


def oversampled(min_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """`min_size` times `WINDOW_OVERSAMPLING` (read per call, so a benchmark can compare without it)."""
    if min_size is None:
        return None
    return min_size[0] * WINDOW_OVERSAMPLING, min_size[1] * WINDOW_OVERSAMPLING


def kept_blocks(length: int, step: int) -> int:
    """How many blocks of `step` a side of `length` pixels becomes: a partial last block counts only when it holds
    at least half a block.

    The caller resamples the reduced image as if every block were whole, so a partial block stretches the image
    by the part that is missing: a 1897-pixel side padded to 238 blocks of 8 is 0.4 % too wide, which moved the
    network's image by 0.0105 on a real film, against 0.0042 with the one column left out. Rounding to the nearest
    whole block halves the largest such error."""
    return max(1, (length + step // 2) // step)


def trim(reduced: np.ndarray, height: int, width: int, step: int) -> np.ndarray:
    """A decoder's reduced image (ceil(side / `step`) on each side, as JPEG's DCT scaling and JPEG 2000's
    resolution levels give) cut to `kept_blocks` on each side."""
    return reduced[:kept_blocks(height, step), :kept_blocks(width, step)] if step > 1 else reduced


def full_size_only() -> bool:
    """Whether `FULL_DECODE_ENV` asks for full-size reads (read per call: a test or benchmark may set it)."""
    return os.environ.get(FULL_DECODE_ENV, "") not in ("", "0")


def shrink(pixels: np.ndarray, min_size: tuple[int, int] | None,
           clip: tuple[float, float] | None = None) -> np.ndarray:
    """Average each `factor` x `factor` block of a 2-D image (float32 out, so no average is rounded); unchanged
    when the factor is 1.

    `clip` (low, high) limits every value before it is averaged: the edges of a linear window, so that the block
    mean of the clipped values is what the window would show of each block (exact, not an approximation).

    Blocks sit on the exact grid, as a JPEG decoder's DCT scaling puts them. A partial last block of at least half
    a block is completed by repeating the edge row or column, as JPEG pads its edge blocks; a smaller one is left
    out (`kept_blocks`). On the exact grid OpenCV's area resampling is a plain block mean, four times faster than a
    fractional scale (0.8 ms against 3.3 ms for 1955 x 1841).
    """
    height, width = pixels.shape[:2]
    step = factor(height, width, min_size)
    if step == 1 or pixels.ndim != 2:
        return pixels
    padded_h, padded_w = kept_blocks(height, step) * step, kept_blocks(width, step) * step
    height, width = min(height, padded_h), min(width, padded_w)
    values = np.empty((padded_h, padded_w), np.float32)
    values[:height, :width] = pixels[:height, :width]
    if clip is not None:
        np.clip(values[:height, :width], clip[0], clip[1], out=values[:height, :width])
    values[height:, :width] = values[height - 1:height, :width]
    values[:, width:] = values[:, width - 1:width]
    return cv2.resize(values, (padded_w // step, padded_h // step), interpolation=cv2.INTER_AREA)
