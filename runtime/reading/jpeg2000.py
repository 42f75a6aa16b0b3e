"""JPEG 2000 decoded at the resolution the model needs, not at the detector's.

A JPEG 2000 codestream is a wavelet pyramid: each resolution level halves both sides, and OpenJPEG can stop
decoding at any level (``cp_reduce``), which skips most of the work. A 1955 x 1841 chest CR decodes in about
150 ms at full size and under 10 ms at level 3 (245 x 231), and the model reads 224 x 224 anyway.

`reduction` picks the largest level that keeps both sides at least the contract's input size (the same rule as the
JPEG DCT scaling in `images`): the image is then still shrunk by the contract's own area resampling, never
enlarged, so the model sees a properly filtered image. The lower level is the wavelet low-pass (the 9-7 or 5-3
filter of the encoder), which is what area resampling approximates; labels and probabilities match the full
decode within what INT8 itself changes (``tests/runtime/test_jpeg2000.py``, ``benchmarks/decode/``).

The binding is glymur over the system's libopenjp2 (Debian's ``libopenjp2-7``, which ``make`` installs). Where
either is missing, or a codestream is one this path does not cover (several components, a precision the DICOM
header contradicts), `decode` returns None with the reason logged at debug level, and the caller decodes in full.
"""

from __future__ import annotations

import logging
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .shrink import FULL_DECODE_ENV, full_size_only, kept_blocks, trim

__all__ = ["J2K_SIGNATURES", "reduction", "decode", "precision", "available", "J2K_TRANSFER_SYNTAXES",
           "FULL_DECODE_ENV", "codestream_levels"]

log = logging.getLogger(__name__)

J2K_SIGNATURES = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  \r\n\x87\n")
"""A raw codestream (SOC + SIZ markers), and the JP2 file format's signature box."""
J2K_TRANSFER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossless only), JPEG 2000
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
})
_SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
"""glymur reads files only; a codestream from a DICOM fragment goes through RAM, not the disk."""




@cache
def available() -> str | None:
    """None if reduced decoding works here, else why not."""
    if full_size_only():
        return f"{FULL_DECODE_ENV} is set"
    try:
        import glymur
    except ImportError as exc:
        return f"glymur is not installed ({exc})"
    version = getattr(glymur.version, "openjpeg_version", "0.0.0")
    if tuple(int(v) for v in version.split(".")[:2] if v.isdigit()) < (2, 3):
        return f"libopenjp2 2.3 or later is needed, found {version or 'none'} (Debian: apt install libopenjp2-7)"
    return None


def reduction(height: int, width: int, min_size: tuple[int, int], levels: int) -> int:
    """The largest resolution level (0: full size) that keeps both sides at least `min_size` (height, width)."""
    min_h, min_w = min_size
    level = 0
    while (level < levels and kept_blocks(height, 2 ** (level + 1)) >= min_h
           and kept_blocks(width, 2 ** (level + 1)) >= min_w):
        level += 1
    return level


def precision(path: Path) -> int | None:
    """The bits per sample a .jp2/.j2k file's codestream declares, or None where it cannot be read here."""
    if available() is not None:
        return None
    import glymur

    try:
        return int(_segments(glymur.Jp2k(str(path)))["SIZ"].bitdepth[0])
    except Exception as exc:
        log.debug("JPEG 2000 precision unknown: %s", exc)
        return None


def decode(source: bytes | Path, min_size: tuple[int, int], *, bits_stored: int | None = None,
           signed: bool | None = None, bits_allocated: int | None = None) -> np.ndarray | None:
    """Decode one grayscale JPEG 2000 image at the smallest resolution level that is still big enough.

    Args:
        source: a codestream (from a DICOM fragment) or a .jp2/.j2k file.
        min_size: (height, width) the image will be resized to.
        bits_stored, signed: what a DICOM header says of the stored values; a codestream that disagrees is left to
            the full decoder, which knows how to reconcile them.
        bits_allocated: the header's word size, also accepted as the codestream's precision (encoders such as
            OpenJPH write 15-bit values in 16-bit words as a 16-bit codestream: the numbers are the same).

    Returns:
        The stored values at the reduced size, or None (full decoding should be used; the reason is logged).
    """
    reason = available()
    if reason is not None:
        log.debug("JPEG 2000 at full size: %s", reason)
        return None
    import glymur

    scratch = None
    try:
        if isinstance(source, bytes):
            scratch = tempfile.NamedTemporaryFile(suffix=".j2k", dir=_SCRATCH, delete=False)
            with scratch:
                scratch.write(source)
            path = Path(scratch.name)
        else:
            path = Path(source)
        image = glymur.Jp2k(str(path))
        segments = _segments(image)
        siz, cod = segments["SIZ"], segments["COD"]
        if siz.Csiz != 1:
            log.debug("JPEG 2000 at full size: %d components", siz.Csiz)
            return None
        precision, is_signed = int(siz.bitdepth[0]), bool(siz.signed[0])
        if ((bits_stored is not None and precision not in (bits_stored, bits_allocated))
                or (signed is not None and is_signed != signed)):
            log.debug("JPEG 2000 at full size: the codestream's %d-bit %s values differ from the header's", precision,
                      "signed" if is_signed else "unsigned")
            return None
        height, width = image.shape[:2]
        level = reduction(height, width, min_size, int(cod.num_res))  # decomposition levels
        if level == 0:
            return None  # the full decoder is no slower
        step = 2 ** level
        return np.ascontiguousarray(trim(image[::step, ::step], height, width, step))
    except Exception as exc:  # any refusal of the fast path leaves the image to the full decoder
        log.debug("JPEG 2000 at full size: %s: %s", type(exc).__name__, exc)
        return None
    finally:
        if scratch is not None:
            os.unlink(scratch.name)


def _segments(image: Any) -> dict[str, Any]:
    """The main header's marker segments by name (HTJ2K puts a CAP segment between SIZ and COD)."""
    return {getattr(segment, "marker_id", ""): segment for segment in image.codestream.segment}


def codestream_levels(data: bytes) -> int | None:
    """The decomposition levels a codestream's COD segment declares, read from its main header (None if absent).

    Cheap (a few markers of the header): the reduced HTJ2K decoder needs it before decoding a byte of tiles.
    """
    start = data.find(b"\xff\x4f\xff\x51")  # SOC then SIZ: a bare codestream, or one inside JP2 boxes
    if start < 0:
        return None
    position = start + 2
    while position + 4 <= len(data):
        marker, length = int.from_bytes(data[position:position + 2]), int.from_bytes(data[position + 2:position + 4])
        if marker == 0xFF52 and position + 9 < len(data):  # COD: Lcod, Scod, SGcod (4 bytes), then the levels
            return data[position + 9]
        if marker in (0xFF90, 0xFF93) or marker < 0xFF00 or length < 2:  # SOT, SOD or garbage: header ended
            return None
        position += 2 + length
    return None
