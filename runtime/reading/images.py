"""The one image loader shared by training, calibration and the runtime.

Every input (PNG, JPEG, BMP, TIFF, DICOM; 8 or 16 bit; grayscale, RGB or RGBA) becomes one canonical image: a
2-D float32 array in [0, 1] where 1 is white (dense tissue and bone appear bright, as on a MONOCHROME2 display).
Anything that cannot become such an image raises `ImageError` naming the file and the reason, so one bad file
never stops a batch.

Work is ordered so that a broken or hostile file costs little: the file's size, then its header (Pillow's
format parsers read headers lazily from the open file; pydicom stops before the pixel data) are checked before
the rest of the file is read, and absurd sizes, progressive JPEGs of hundreds of scans and files that cannot be
chest radiographs are refused there. JPEG is decoded by libjpeg-turbo through simplejpeg in strict mode (a
corrupt or truncated entropy-coded segment is an error, even when an end-of-image marker was appended), other
rasters by OpenCV, DICOM by `dicom_image`. Decoded pixels then pass a sanity check (`check_usable`): nothing
unusable (non-finite, flat, without contrast, too small) reaches the model.
"""

from __future__ import annotations

import math
import stat
import struct
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from ..errors import ImageError, first_line, os_reason
from . import jpeg2000, shrink
from .dicom_image import looks_like_dicom, read_dicom
from .header import HeaderFacts
from .jpeg2000 import J2K_SIGNATURES
from .shrink import MIN_SIDE

__all__ = [
    "warm_up",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_JPEG_SCANS",
    "MIN_SIDE",
    "LoadedImage",
    "read_image",
    "load_image",
    "sniff_format",
    "check_usable",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".jp2", ".j2k", ".j2c", ".jph", ".jhc",
                            ".dcm", ".dicom"})
"""File name endings the dataset reader and folder walkers treat as images (content decides the decoder)."""

MAX_PIXELS = 50_000_000
"""Images above 50 megapixels are refused from their header, before decoding (decompression bombs). The largest
chest detectors (43 x 43 cm at 70 um pixels) make about 38 megapixels."""

MAX_FILE_BYTES = 256 << 20
"""Files above 256 MiB are refused unread: an uncompressed 16-bit 50-megapixel radiograph is 100 MiB."""

MAX_JPEG_SCANS = 64
"""A progressive JPEG is decoded scan by scan; encoders write about ten. Thousands of scans are an attack on the
decoder's time (3,000 scans of 67 megapixels took 15 s), so more than this many are refused from a count of the
scan markers, before decoding."""

MIN_FLOAT_SPAN, MAX_FLOAT_SPAN = 1e-12, 1e12
"""Floating-point images (rare TIFFs) are scaled by their own range; real ones hold display values (0-1) or
physical units (up to tens of thousands). Ranges below or above these are damaged data: values of 1e-40
(denormals) or of +-3e38 would also overflow single precision when scaled."""



@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and what the loader noticed on the way.

    Args:
        pixels: 2-D float32 array in [0, 1], 1 = white.
        format: ``png``, ``jpeg``, ``bmp``, ``tiff``, ``jpeg2000`` or ``dicom``.
        warnings: reasons to doubt the result that do not stop it (wrong modality, raw detector data, ...).
        patient: DICOM patient identifiers; kept apart so that nothing prints them unless a user asks.
        header: what a DICOM header says about the image (modality, body part, view, age, device), for the gate
            and for monitoring.
        stored: (height, width, bits) of the image as stored, before any reduced read (for monitoring).
    """

    pixels: np.ndarray
    format: str
    warnings: tuple[str, ...] = ()
    patient: dict[str, str] | None = None
    header: HeaderFacts | None = None
    stored: tuple[int, int, int | None] | None = None


def sniff_format(head: bytes) -> str | None:
    """Name the image format from a file's first 132 bytes, or None; the content decides, not the file name."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith(J2K_SIGNATURES):
        return "jpeg2000"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


def read_image(path: str | Path, *, min_size: tuple[int, int] | None = None) -> LoadedImage:
    """Decode one file into the canonical grayscale image.

    Args:
        path: the file to read.
        min_size: (height, width) the caller will resize to. Large JPEGs are then decoded at 1/2, 1/4 or 1/8
            scale in the DCT domain, and JPEG 2000 at a lower resolution level (several times faster), while
            staying at least this big; training and the runtime pass the same value, so both see the same pixels.

    Raises:
        ImageError: the file cannot be used; the message names the file and the reason.
    """
    path = Path(path)
    fmt = None
    try:
        with _open(path) as (handle, size):
            head = handle.read(132)
            fmt = sniff_format(head)
            if fmt is None and (path.suffix.lower() in (".dcm", ".dicom") or looks_like_dicom(head)):
                fmt = "dicom"  # DICOM files without the 128-byte preamble exist (old PACS exports)
            if fmt is None:
                raise ImageError(path, "not an image: content is not PNG, JPEG, BMP, TIFF, JPEG 2000 or DICOM"
                                       f"{_looks_like(head + handle.read(380))}")
            if fmt == "dicom":
                pixels, warnings, patient, header = read_dicom(path, handle, size, min_size, MAX_PIXELS)
                loaded = LoadedImage(pixels, "dicom", warnings, patient, header,
                                     (header.rows, header.columns, header.bits_stored))
            else:
                loaded = _read_raster(path, handle, size, fmt, min_size)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError(path, "not enough memory to decode this image") from exc
    except OSError as exc:
        raise ImageError(path, f"cannot read: {os_reason(exc, path)}") from exc
    except Exception as exc:  # a decoder failing on hostile bytes must still be a per-file error
        raise ImageError(path, f"cannot decode {(fmt or 'image').upper()}: {first_line(exc)}") from exc
    return replace(loaded, warnings=loaded.warnings + check_usable(path, loaded.pixels))


def load_image(path: str | Path, *, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Shorthand for ``read_image(path, min_size=min_size).pixels``."""
    return read_image(path, min_size=min_size).pixels


class _open:  # noqa: N801 (a context manager)
    """The file, opened for reading after the checks that need no content: a regular file, not empty, not huge.
    Yields the handle and the size; file-system failures become `ImageError` naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> tuple[IO[bytes], int]:
        path = self.path
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise ImageError(path, "not a regular file")
            if info.st_size == 0:
                raise ImageError(path, "empty file (0 bytes)")
            if info.st_size > MAX_FILE_BYTES:
                raise ImageError(path, f"file is {info.st_size / 2**20:,.0f} MiB, over the "
                                       f"{MAX_FILE_BYTES >> 20} MiB limit")
            self.handle = open(path, "rb")  # noqa: SIM115 (closed in __exit__)
        except OSError as exc:
            raise ImageError(path, os_reason(exc, path)) from exc
        return self.handle, info.st_size

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _looks_like(data: bytes) -> str:
    """A hint for the error message when a file is plainly something else (text, HTML, an archive)."""
    head = data[:512]
    if head.startswith(b"PK\x03\x04"):
        return " (it is a ZIP archive)"
    if head.startswith(b"%PDF"):
        return " (it is a PDF)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return " (it is a text file)"



# --- raster files -------------------------------------------------------------------------------------------


_GRAY_AS_STORED = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
"""OpenCV's flags for every raster: one channel, the stored depth, and the pixels as stored (the EXIF orientation
is applied by `upright`, the same way for every decoder)."""

EXIF_TRANSPOSE = {2: "flip_lr", 3: "rotate_180", 4: "flip_ud", 5: "transpose", 6: "rotate_cw", 7: "transverse",
                  8: "rotate_ccw"}
"""EXIF orientation -> what turns the stored pixels upright, as Pillow's ``ImageOps.exif_transpose`` does."""


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels as the EXIF orientation says they are meant to be seen (a photographed or scanned film is often
    stored turned, with the orientation tag saying so); 1 or an unknown value leaves them as they are."""
    action = EXIF_TRANSPOSE.get(orientation)
    turned = {"flip_lr": lambda a: a[:, ::-1], "rotate_180": lambda a: a[::-1, ::-1], "flip_ud": lambda a: a[::-1],
              "transpose": lambda a: a.T, "rotate_cw": lambda a: np.rot90(a, -1),
              "transverse": lambda a: a[::-1, ::-1].T, "rotate_ccw": lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(turned[action](pixels)) if action else pixels


def _read_raster(path: Path, handle: IO[bytes], size: int, fmt: str,
                 min_size: tuple[int, int] | None) -> LoadedImage:
    if fmt == "jpeg2000":
        return _read_jpeg2000(path, handle, size, min_size)
    handle.seek(0)
    width, height, frames, orientation = _raster_header(path, handle, fmt)
    _check_pixel_count(path, width, height)
    if frames > 1:
        raise ImageError(path, f"multi-page {fmt.upper()} ({frames} pages); save the radiograph as a single image")
    handle.seek(0)
    data = handle.read(size)
    if fmt == "jpeg":
        turned = orientation in (5, 6, 7, 8)  # the DCT scale is chosen for the stored shape
        pixels, notes = _decode_jpeg(path, data, min_size[::-1] if turned and min_size else min_size)
        return LoadedImage(upright(pixels, orientation), fmt, notes, stored=(height, width, 8))
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _GRAY_AS_STORED)
    if pixels is None or pixels.size == 0:
        raise ImageError(path, f"corrupt or truncated {fmt.upper()}: the decoder could not read the pixel data")
    turned = orientation in (5, 6, 7, 8)
    unit, warnings = _to_unit_range(path, pixels, min_size[::-1] if turned and min_size else min_size)
    return LoadedImage(upright(unit, orientation), fmt, warnings, stored=(height, width, pixels.dtype.itemsize * 8))


def _decode_jpeg(path: Path, data: bytes, min_size: tuple[int, int] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """libjpeg-turbo through simplejpeg, strict: a truncated or corrupt scan is an error, not a grey smear, even
    when an end-of-image marker was appended. At 1/2, 1/4 or 1/8 scale in the DCT domain when `min_size` allows."""
    import simplejpeg

    if not data.rstrip(b"\x00").endswith(b"\xff\xd9") and data.rfind(b"\xff\xd9", 2) == -1:
        raise ImageError(path, "truncated JPEG: the end-of-image marker is missing")
    scans = data.count(b"\xff\xda")  # 0xFF is byte-stuffed inside scans: every FFDA starts one
    if scans > MAX_JPEG_SCANS:
        raise ImageError(path, f"progressive JPEG of {scans} scans, over the limit of {MAX_JPEG_SCANS}: no camera or "
                               "console writes that many; decoding it would take minutes")
    try:
        height, width = simplejpeg.decode_jpeg_header(data, strict=True)[:2]
        factor = shrink.factor(height, width, min_size)
        decoded = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=math.ceil(height / factor),
                                         min_width=math.ceil(width / factor), strict=True)
    except ValueError as exc:
        reason = first_line(exc)
        if "data precision" in reason:  # a 12-bit JPEG ("Unsupported JPEG data precision 12"): OpenCV reads it
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _GRAY_AS_STORED)
            if pixels is not None:
                return _to_unit_range(path, pixels)
        raise ImageError(path, f"corrupt or truncated JPEG: {reason}") from exc
    return shrink.trim(decoded[..., 0], height, width, factor).astype(np.float32) * np.float32(1 / 255), ()


def _read_jpeg2000(path: Path, handle: IO[bytes], size: int, min_size: tuple[int, int] | None) -> LoadedImage:
    """A .jp2/.j2k file: at a reduced resolution level where the model allows it, else in full by OpenCV.

    Values are scaled by the codestream's own precision (a 12-bit image stored in 16-bit words is 0-4095, and
    scaling it by 65535 would make it nearly black).
    """
    handle.seek(0)
    width, height, _, _ = _raster_header(path, handle, "jpeg2000")
    _check_pixel_count(path, width, height)
    pixels = jpeg2000.decode(path, min_size) if min_size else None
    if pixels is None:
        handle.seek(0)
        pixels = cv2.imdecode(np.frombuffer(handle.read(size), np.uint8), _GRAY_AS_STORED)
    if pixels is None or pixels.size == 0:
        raise ImageError(path, "corrupt or truncated JPEG 2000: the decoder could not read the pixel data")
    precision = jpeg2000.precision(path)
    stored = (height, width, precision or pixels.dtype.itemsize * 8)
    if precision and pixels.dtype.kind in "ui" and precision < pixels.dtype.itemsize * 8:
        reduced = shrink.shrink(pixels, min_size).astype(np.float32, copy=False)
        return LoadedImage(np.clip(reduced / np.float32(2**precision - 1), 0, 1), "jpeg2000", stored=stored)
    unit, warnings = _to_unit_range(path, pixels, min_size)
    return LoadedImage(unit, "jpeg2000", warnings, stored=stored)


def _raster_header(path: Path, handle: IO[bytes], fmt: str) -> tuple[int, int, int, int]:
    """Width, height, frame count and EXIF orientation from the header alone, read from the open file.

    The format's own Pillow parser is called directly rather than through ``Image.open``: it reads the header
    lazily and skips Pillow's process-wide decompression-bomb limit, which cxr-edge replaces with `MAX_PIXELS`
    so that the message can say how large the image claims to be.
    """
    from PIL import BmpImagePlugin, Jpeg2KImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

    parser = {"png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.JpegImageFile,
              "bmp": BmpImagePlugin.BmpImageFile, "tiff": TiffImagePlugin.TiffImageFile,
              "jpeg2000": Jpeg2KImagePlugin.Jpeg2KImageFile}[fmt]
    try:
        img = parser(handle)
        width, height, frames = img.width, img.height, getattr(img, "n_frames", 1)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(path, f"corrupt {fmt.upper()} header: {first_line(exc)}") from exc
    try:  # EXIF in the header (JPEG APP1, TIFF tags, a PNG eXIf chunk before the pixels); damaged EXIF is ignored
        exif = img.getexif() if fmt in ("jpeg", "tiff") else None
        if fmt == "png" and img.info.get("exif"):
            exif = img.getexif()
        orientation = int(exif.get(0x0112, 1)) if exif is not None else 1
    except Exception:
        orientation = 1
    return width, height, frames, orientation


def _check_pixel_count(path: Path, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(path, f"image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageError(
            path, f"absurd size: {width}x{height} is {width * height / 1e6:.0f} megapixels, "
            f"over the {MAX_PIXELS // 1_000_000} megapixel limit"
        )


def _to_unit_range(path: Path, pixels: np.ndarray,
                   min_size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer images scale by their type's full range, float images (rare TIFFs) by their own finite range;
    integer images are first reduced towards `min_size` (`shrink`), their depth judged on every pixel.

    A 16-bit image whose values all fit in 10, 12 or 14 bits and fill that depth is a detector's data in 16-bit
    words (a common PNG export): it is scaled by that depth, with a warning, rather than shown nearly black.
    """
    if pixels.ndim == 3:  # OpenCV keeps channels for a few exotic layouts; average them to gray
        pixels = pixels[..., :3].mean(axis=2)
    if pixels.dtype == np.uint8:
        out = shrink.shrink(pixels, min_size).astype(np.float32)
        out *= np.float32(1 / 255)
        return out, ()
    if pixels.dtype == np.uint16:
        top = int(pixels.max())
        bits = max(1, top.bit_length())
        depth, note = 16, ()
        if bits in (10, 12, 14):
            depth = bits
            note = (f"16-bit image whose values stop at {top}: read as {bits}-bit data",)
        out = shrink.shrink(pixels, min_size).astype(np.float32)
        out *= np.float32(1 / (2**depth - 1))
        return out, note
    pixels = pixels.astype(np.float32)
    finite = np.isfinite(pixels)
    if not finite.all():
        return pixels, ()  # the sanity check refuses it, naming the reason
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi <= lo:
        return np.full_like(pixels, 0.5), ()
    if not MIN_FLOAT_SPAN <= hi - lo <= MAX_FLOAT_SPAN:
        raise ImageError(path, f"floating-point pixel values span {lo:.3g} to {hi:.3g}: no scale of an image "
                               "lies there (the data are damaged or not an image)")
    return np.clip((pixels.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), ()


def check_usable(path: Path, pixels: np.ndarray) -> tuple[str, ...]:
    """Refuse decoded pixels that cannot be a radiograph the model can read, with the reason.

    The canonical images of the shared training data span at least 0.28 between their 0.5th and 99.5th
    percentiles, their brightest pixel is at least 0.62 and their standard deviation at least 0.06; the limits
    below sit several times beyond that, so a real film never meets them and a broken decode (a window of "NaN", a
    rescale slope of 0, a LUT that wrapped, 12-bit data shown as 16-bit) always does. Computed on every fourth
    pixel of every fourth row: a few hundred microseconds on a detector-size image.

    Returns:
        warnings about pixels that pass but deserve a word (none yet: every finding here is a refusal).
    """
    height, width = pixels.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageError(path, f"image is only {width}x{height} pixels; a chest radiograph needs at least "
                               f"{MIN_SIDE} on each side")
    sample = pixels[::4, ::4] if min(height, width) >= 4 * MIN_SIDE else pixels
    if not np.isfinite(sample).all() or not np.isfinite(pixels).all():
        raise ImageError(path, "pixel values are not finite numbers (NaN or infinity) after decoding: the file's "
                               "rescale or window values, or its floating-point data, are broken")
    low, high = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    if float(pixels.max()) - float(pixels.min()) < 1e-6:
        raise ImageError(path, f"the image is one flat value ({float(pixels.min()):.3g}): nothing to classify")
    if float(pixels.max()) < 0.15:
        raise ImageError(path, f"nearly black: the brightest pixel is {float(pixels.max()):.3f} of white (the "
                               "window, VOI LUT or bit depth of the file is wrong)")
    if float(pixels.min()) > 0.85:
        raise ImageError(path, f"nearly white: the darkest pixel is {float(pixels.min()):.3f} of white")
    if high - low < 0.05:
        raise ImageError(path, f"almost no contrast: 99 % of the pixels lie within {high - low:.3f} of each other "
                               "(the window, rescale or bit depth of the file is wrong, or it is blank)")
    return ()


def warm_up() -> threading.Thread:
    """Import the decoders' libraries in a background thread and return it.

    pydicom alone takes about 0.3 s to import; started while the engine loads its model, that time is hidden
    instead of being counted against the first DICOM of a run. A read that comes first simply waits for the
    import (Python's import lock), so nothing depends on the thread finishing."""
    def load() -> None:
        import pydicom.pixels  # noqa: F401
        import simplejpeg  # noqa: F401

    thread = threading.Thread(target=load, name="cxr-edge-warm-up", daemon=True)
    thread.start()
    return thread
