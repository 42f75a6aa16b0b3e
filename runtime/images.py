"""The one image loader shared by training, calibration and the runtime.

Every input (PNG, JPEG, BMP, TIFF, DICOM; 8 or 16 bit; grayscale, RGB or RGBA) becomes one canonical image: a
2-D float32 array in [0, 1] where 1 is white (dense tissue and bone appear bright, as on a MONOCHROME2 display).
Anything that cannot become such an image raises `ImageError` naming the file and the reason, so one bad file
never stops a batch.

Raster files are decoded by OpenCV (faster than Pillow here and releases the GIL); Pillow only reads headers, so
that absurd sizes are refused before a single pixel is decoded. DICOM goes through pydicom and its decoder
plugins, then the standard's pixel pipeline: modality LUT, VOI LUT or window, MONOCHROME1 inversion.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import jpeg2000
from .errors import ImageError, first_line
from .gate import LATERAL_VIEWS, HeaderFacts
from .jpeg2000 import J2K_SIGNATURES

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "LoadedImage",
    "read_image",
    "load_image",
    "sniff_format",
    "dicom_grayscale",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".jp2", ".j2k", ".j2c", ".dcm",
                            ".dicom"})
"""File name endings the dataset reader and folder walkers treat as images (content decides the decoder)."""

MAX_PIXELS = 100_000_000
"""Images above 100 megapixels are refused from their header, before decoding (decompression bombs)."""

MAX_FILE_BYTES = 1 << 30
"""Files above 1 GiB are refused unread: no chest radiograph is that large."""

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR"})

RAW_DETECTOR_WARNING = "'For Processing' image: raw detector data, not the processed image the model was trained on"
"""The warning for DX "For Processing" images (by Presentation Intent Type or by SOP class)."""

_JPEG_REDUCTIONS = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                    (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and what the loader noticed on the way.

    Args:
        pixels: 2-D float32 array in [0, 1], 1 = white.
        format: ``png``, ``jpeg``, ``bmp``, ``tiff``, ``jpeg2000`` or ``dicom``.
        warnings: reasons to doubt the result that do not stop it (wrong modality, raw detector data, ...).
        patient: DICOM patient identifiers; kept apart so that nothing prints them unless a user asks.
        header: what a DICOM header says about the image (modality, body part, view, age), for the gate.
    """

    pixels: np.ndarray
    format: str
    warnings: tuple[str, ...] = ()
    patient: dict[str, str] | None = None
    header: HeaderFacts | None = None


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
            scale in the DCT domain (several times faster) while staying at least this big; training and the
            runtime pass the same value, so both see the same pixels.

    Raises:
        ImageError: the file cannot be used; the message names the file and the reason.
    """
    path = Path(path)
    data = _read_bytes(path)
    fmt = sniff_format(data[:132])
    if fmt is None and path.suffix.lower() in (".dcm", ".dicom"):
        fmt = "dicom"  # DICOM files without the 128-byte preamble exist (old PACS exports)
    if fmt is None:
        raise ImageError(path, f"not an image: content is not PNG, JPEG, BMP, TIFF or DICOM{_looks_like(data)}")
    try:
        if fmt == "dicom":
            return _read_dicom(path, data, min_size)
        return _read_raster(path, data, fmt, min_size)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError(path, "not enough memory to decode this image") from exc
    except Exception as exc:  # a decoder failing on hostile bytes must still be a per-file error
        raise ImageError(path, f"cannot decode {fmt.upper()}: {first_line(exc)}") from exc


def load_image(path: str | Path, *, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Shorthand for ``read_image(path, min_size=min_size).pixels``."""
    return read_image(path, min_size=min_size).pixels


def _read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageError(path, "not a regular file")
        if size == 0:
            raise ImageError(path, "empty file (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise ImageError(path, f"file is {size / 2**30:.1f} GiB, over the {MAX_FILE_BYTES >> 30} GiB limit")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(path, "no such file") from exc
    except PermissionError as exc:
        raise ImageError(path, "permission denied") from exc
    except IsADirectoryError as exc:
        raise ImageError(path, "is a directory") from exc
    except OSError as exc:
        raise ImageError(path, f"cannot read: {exc.strerror or exc}") from exc


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


def _read_raster(path: Path, data: bytes, fmt: str, min_size: tuple[int, int] | None) -> LoadedImage:
    if fmt == "jpeg2000":
        return _read_jpeg2000(path, data, min_size)
    width, height, frames = _raster_header(path, data, fmt)
    _check_pixel_count(path, width, height)
    if frames > 1:
        raise ImageError(path, f"multi-page {fmt.upper()} ({frames} pages); save the radiograph as a single image")
    if fmt == "jpeg" and not _jpeg_is_complete(data):
        raise ImageError(path, "truncated JPEG: the end-of-image marker is missing")
    buf = np.frombuffer(data, np.uint8)
    flags = _jpeg_reduced_flag(width, height, min_size) if fmt == "jpeg" else None
    if flags is None:
        flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH
    pixels = cv2.imdecode(buf, flags)
    if pixels is None or pixels.size == 0:
        raise ImageError(path, f"corrupt or truncated {fmt.upper()}: the decoder could not read the pixel data")
    return LoadedImage(_to_unit_range(pixels), fmt)


def _read_jpeg2000(path: Path, data: bytes, min_size: tuple[int, int] | None) -> LoadedImage:
    """A .jp2/.j2k file: at a reduced resolution level where the model allows it, else in full by OpenCV.

    Values are scaled by the codestream's own precision (a 12-bit image stored in 16-bit words is 0-4095, and
    scaling it by 65535 would make it nearly black).
    """
    from PIL import Jpeg2KImagePlugin

    try:
        with Jpeg2KImagePlugin.Jpeg2KImageFile(io.BytesIO(data)) as img:
            width, height = img.width, img.height
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(path, f"corrupt JPEG 2000 header: {first_line(exc)}") from exc
    _check_pixel_count(path, width, height)
    pixels = jpeg2000.decode(path, min_size) if min_size else None
    if pixels is None:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if pixels is None or pixels.size == 0:
        raise ImageError(path, "corrupt or truncated JPEG 2000: the decoder could not read the pixel data")
    precision = jpeg2000.precision(path)
    if precision and pixels.dtype.kind in "ui" and precision < pixels.dtype.itemsize * 8:
        return LoadedImage(np.clip(pixels.astype(np.float32) / np.float32(2**precision - 1), 0, 1), "jpeg2000")
    return LoadedImage(_to_unit_range(pixels), "jpeg2000")


def _raster_header(path: Path, data: bytes, fmt: str) -> tuple[int, int, int]:
    """Width, height and frame count from the header alone.

    The format's own Pillow parser is called directly rather than through ``Image.open``: it reads the header
    lazily and skips Pillow's process-wide decompression-bomb limit, which cxr-edge replaces with `MAX_PIXELS`
    so that the message can say how large the image claims to be.
    """
    from PIL import BmpImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

    parser = {"png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.JpegImageFile,
              "bmp": BmpImagePlugin.BmpImageFile, "tiff": TiffImagePlugin.TiffImageFile}[fmt]
    try:
        with parser(io.BytesIO(data)) as img:
            return img.width, img.height, getattr(img, "n_frames", 1)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(path, f"corrupt {fmt.upper()} header: {first_line(exc)}") from exc


def _check_pixel_count(path: Path, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(path, f"image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageError(
            path, f"absurd size: {width}x{height} is {width * height / 1e6:.0f} megapixels, "
            f"over the {MAX_PIXELS // 1_000_000} megapixel limit"
        )


def _jpeg_is_complete(data: bytes) -> bool:
    """A complete JPEG ends with the EOI marker, possibly followed by padding or a vendor trailer."""
    return data.rfind(b"\xff\xd9", 2) != -1


def _jpeg_reduced_flag(width: int, height: int, min_size: tuple[int, int] | None) -> int | None:
    """The largest DCT-domain reduction that keeps the decoded image at least `min_size` (height, width)."""
    if min_size is None:
        return None
    min_h, min_w = min_size
    for factor, flag in _JPEG_REDUCTIONS:
        if math.ceil(height / factor) >= min_h and math.ceil(width / factor) >= min_w:
            return flag | cv2.IMREAD_ANYDEPTH
    return None


def _to_unit_range(pixels: np.ndarray) -> np.ndarray:
    """Integer images scale by their type's full range; float images (rare TIFFs) by their own range."""
    if pixels.ndim == 3:  # OpenCV keeps channels for a few exotic layouts; average them to gray
        pixels = pixels[..., :3].mean(axis=2)
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) * np.float32(1 / 255)
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) * np.float32(1 / 65535)
    return _min_max(pixels.astype(np.float32))


def _min_max(pixels: np.ndarray) -> np.ndarray:
    """Stretch to [0, 1] by the data's own range (non-finite values, only possible in float data, become 0)."""
    pixels = pixels.astype(np.float32, copy=False)
    lo, hi = float(pixels.min()), float(pixels.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(pixels.min()), float(pixels.max())
    if hi <= lo:
        return np.zeros_like(pixels, dtype=np.float32)
    return (pixels - np.float32(lo)) * np.float32(1 / (hi - lo))


# --- DICOM ----------------------------------------------------------------------------------------------------


def _read_dicom(path: Path, data: bytes, min_size: tuple[int, int] | None = None) -> LoadedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=sniff_format(data[:132]) != "dicom")
    except InvalidDicomError as exc:
        raise ImageError(path, "not a DICOM file: the 'DICM' marker is missing") from exc
    except Exception as exc:
        raise ImageError(path, f"unreadable DICOM header: {first_line(exc)}") from exc
    if "PixelData" not in ds:
        what = "" if "SOPClassUID" not in ds else f" (SOP class {ds.SOPClassUID.name})"
        raise ImageError(path, f"DICOM has no pixel data{what}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(path, f"multi-frame DICOM ({frames} frames) is not supported; send a single radiograph")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_pixel_count(path, cols, rows)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
        raise ImageError(path, f"unsupported DICOM photometric interpretation {photometric or '(missing)'!r}")
    try:
        stored = _jpeg_baseline_gray(ds, rows, cols)
        if stored is None and min_size is not None:
            stored = _jpeg2000_reduced(ds, min_size)
        if stored is None:
            stored = ds.pixel_array
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        name = getattr(syntax, "name", None) or "unknown transfer syntax"
        raise ImageError(path, f"cannot decode DICOM pixel data ({name}): {first_line(exc)}") from exc
    if stored.ndim == 3 and stored.shape[-1] in (3, 4):  # colour secondary captures: pydicom gives RGB
        pixels = _to_unit_range(cv2.cvtColor(stored[..., :3], cv2.COLOR_RGB2GRAY))
    elif stored.ndim == 2:
        pixels = dicom_grayscale(stored, ds)
    else:
        raise ImageError(path, f"unexpected DICOM pixel array shape {stored.shape}")
    patient = {"name": str(ds.get("PatientName", "") or ""), "id": str(ds.get("PatientID", "") or "")}
    return LoadedImage(pixels, "dicom", _dicom_warnings(ds), patient, HeaderFacts.from_dataset(ds))


def _jpeg_baseline_gray(ds: object, rows: int, cols: int) -> np.ndarray | None:
    """Decode a single-frame 8-bit grayscale JPEG Baseline DICOM with OpenCV's libjpeg-turbo, or None to let
    pydicom do it.

    pydicom's plugins decoded 1024 px chest images in 9-22 ms here (its pylibjpeg fallback is the slow one);
    OpenCV takes 1-2 ms, releases the GIL and yields the same stored values (the same baseline IDCT, within 1).
    """
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEGBaseline8Bit

    if (ds.file_meta.get("TransferSyntaxUID") != JPEGBaseline8Bit or int(ds.get("SamplesPerPixel", 1)) != 1
            or int(ds.get("BitsAllocated", 0)) != 8):
        return None
    frame = next(generate_frames(ds.PixelData, number_of_frames=1), None)
    decoded = None if frame is None else cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_GRAYSCALE)
    return decoded if decoded is not None and decoded.shape == (rows, cols) else None


def _jpeg2000_reduced(ds: object, min_size: tuple[int, int]) -> np.ndarray | None:
    """A single-frame grayscale JPEG 2000 DICOM decoded at the smallest resolution level that still covers
    `min_size` (`cxr_edge.runtime.jpeg2000`), or None to let pydicom decode it in full.

    The stored values keep their meaning at any level, so the modality LUT, VOI and MONOCHROME1 steps that follow
    are the same as for the full image.
    """
    from pydicom.encaps import generate_frames

    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if (syntax not in jpeg2000.J2K_TRANSFER_SYNTAXES or int(ds.get("SamplesPerPixel", 1)) != 1
            or int(ds.get("NumberOfFrames", 1) or 1) != 1):
        return None
    frame = next(generate_frames(ds.PixelData, number_of_frames=1), None)
    if not frame:
        return None
    return jpeg2000.decode(frame, min_size, bits_stored=int(ds.get("BitsStored", 0)) or None,
                           signed=int(ds.get("PixelRepresentation", 0)) == 1)


def dicom_grayscale(stored: np.ndarray, ds: object) -> np.ndarray:
    """Stored DICOM values to display values in [0, 1], in the order PS3.3 C.11 defines.

    1. Modality LUT (rescale slope/intercept or a LUT; signed pixels handled by pydicom).
    2. VOI: a VOI LUT if present, else the first window; without either, the actual data range.
    3. MONOCHROME1 inversion over the VOI *output* range (here always [0, 1]), never over BitsStored, which a VOI
       LUT or window has already left behind.
    """
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(stored, ds).astype(np.float32, copy=False)  # float32 is exact up to 24 bits
    shown = _apply_voi(values, ds)
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        shown = np.float32(1.0) - shown
    return shown.astype(np.float32, copy=False)


def _apply_voi(values: np.ndarray, ds: object) -> np.ndarray:
    from pydicom.pixels import apply_voi

    voi_luts = ds.get("VOILUTSequence")
    if voi_luts:
        # A LUT is indexed by integers; modality output of integer-valued rescaling is integral anyway.
        mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=0).astype(np.float64)
        bits = int(voi_luts[0].LUTDescriptor[2])
        # Descriptors that under-state the LUT's depth are common; trust the data when it says more.
        top = max(float(2**bits - 1), float(mapped.max()))
        return (np.clip(mapped / top, 0.0, 1.0) if top > 0 else np.zeros_like(mapped)).astype(np.float32)
    window = _first_window(ds)
    if window is not None:
        return _window(values, *window, str(ds.get("VOILUTFunction", "LINEAR")).upper())
    return _min_max(values)


def _first_window(ds: object) -> tuple[float, float] | None:
    """The first of possibly several window presets, or None when there is none usable."""
    from pydicom.multival import MultiValue

    def first(value: object) -> float:
        return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)

    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    return (first(centre), first(width)) if first(width) >= 1 else None


def _window(values: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    """Windowing straight to [0, 1] (PS3.3 C.11.2.1.2 and C.11.2.1.3).

    Written here rather than taken from pydicom because pydicom maps to an output range derived from
    BitsStored, which would then have to be undone; mapping to [0, 1] directly leaves no range to get wrong.
    """
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))).astype(np.float32, copy=False)
    if function == "LINEAR_EXACT":
        return np.clip((values - centre) / width + 0.5, 0.0, 1.0).astype(np.float32, copy=False)
    # LINEAR: the standard's half-pixel offsets
    if width <= 1:
        return (values > centre - 0.5).astype(np.float32)
    scale = np.float32(1.0 / (width - 1.0))
    return np.clip((values - np.float32(centre - 0.5)) * scale + np.float32(0.5), 0.0, 1.0)


def _dicom_warnings(ds: object) -> tuple[str, ...]:
    """Doubts about what the DICOM shows; never includes patient identifiers."""
    found = []
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        found.append(f"modality is {modality}, not a radiograph (CR/DX); the model was trained on chest X-rays")
    body_part = str(ds.get("BodyPartExamined", "") or "").upper()
    if body_part and body_part != "CHEST":
        found.append(f"body part is {body_part}, not CHEST")
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in LATERAL_VIEWS:
        found.append(f"view position is {view}: a lateral view; the model was trained on frontal films")
    if str(ds.get("PresentationIntentType", "") or "").upper() == "FOR PROCESSING":
        found.append(RAW_DETECTOR_WARNING)
    return tuple(found)
