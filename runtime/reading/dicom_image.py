"""DICOM files to the canonical grayscale image: header checks, decoding, and the standard's pixel pipeline.

Order of work, so that a hostile or broken file costs little: the header is parsed without the pixel data and
checked (pixel data present, one frame, a size under the limit, a photometric interpretation this reads), then
the pixel data is decoded by the fastest decoder measured for its transfer syntax (`codecs`; JPEG 2000 and HTJ2K
at a reduced resolution), then the stored values pass through PS3.3 C.11: modality LUT, VOI LUT or window,
MONOCHROME1 inversion.

pydicom's own warnings and log lines quote header values, patient fields among them, and are never passed on;
a decoder's failure is reported by its own message ("pylibjpeg: ..."), not pydicom's summary of all plugins.
"""

from __future__ import annotations

import io
import logging
import math
from typing import IO, Any

import numpy as np

from ..errors import ImageError, first_line
from . import codecs, shrink
from .header import HeaderFacts

__all__ = ["read_dicom", "quiet_pydicom", "dicom_grayscale", "RAW_DETECTOR_WARNING", "looks_like_dicom"]

log = logging.getLogger(__name__)

RAW_DETECTOR_WARNING = "'For Processing' image: raw detector data, not the processed image the model was trained on"
"""The warning for DX "For Processing" images (by Presentation Intent Type or by SOP class)."""
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
_JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                            "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
"""JPEG (baseline, extended, lossless) and JPEG-LS: their frames end with the end-of-image marker, whose absence
shows a truncated fragment (the JPEG-LS decoder otherwise returns the half it read without a word)."""
_FIRST_ELEMENTS = (b"\x02\x00\x00\x00", b"\x02\x00\x01\x00", b"\x02\x00\x02\x00", b"\x08\x00\x05\x00",
                   b"\x08\x00\x08\x00", b"\x08\x00\x12\x00", b"\x08\x00\x16\x00", b"\x08\x00\x18\x00")
"""The first tags of a little-endian dataset without the 128-byte preamble (file meta, or the SOP common module)."""


def looks_like_dicom(head: bytes) -> bool:
    """A dataset written without preamble and 'DICM' (old PACS exports, often named IM0001 without a suffix)."""
    return head[:4] in _FIRST_ELEMENTS


def quiet_pydicom() -> None:
    """Make pydicom keep header values to itself, process-wide and once.

    pydicom's checks of value representations warn and log the offending value (an invalid PatientBirthDate or
    PatientAge is quoted verbatim). cxr-edge judges a header by what it needs and never echoes patient fields,
    so those checks are switched off and pydicom's logger is silenced. Done globally rather than per call:
    ``warnings.catch_warnings`` is not thread-safe, and files are decoded in several threads.
    """
    global _QUIETED
    if _QUIETED:
        return
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    _QUIETED = True


_QUIETED = False


def read_dicom(path: Any, handle: IO[bytes], size: int, min_size: tuple[int, int] | None,
               max_pixels: int) -> tuple[np.ndarray, tuple[str, ...], dict[str, str], HeaderFacts]:
    """Decode one DICOM file opened as `handle` (`size` bytes).

    Returns:
        the canonical pixels, warnings, patient identifiers (kept apart) and header facts.

    Raises:
        ImageError: naming the file and the reason.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    quiet_pydicom()
    handle.seek(0)
    preamble = handle.read(132)[128:132] == b"DICM"
    handle.seek(0)
    try:
        ds = pydicom.dcmread(handle, force=not preamble, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise ImageError(path, "not a DICOM file: the 'DICM' marker is missing") from exc
    except Exception as exc:
        raise ImageError(path, f"unreadable DICOM header: {first_line(exc)}") from exc
    _check_header(path, ds, max_pixels)
    handle.seek(0)
    try:
        ds = pydicom.dcmread(io.BytesIO(handle.read(size)), force=not preamble)
    except Exception as exc:
        raise ImageError(path, f"unreadable DICOM data: {first_line(exc)}") from exc
    if "PixelData" not in ds:
        what = "" if "SOPClassUID" not in ds else f" (SOP class {ds.SOPClassUID.name})"
        raise ImageError(path, f"DICOM has no pixel data{what}")
    meta = ds.file_meta if hasattr(ds, "file_meta") else pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" not in meta:  # a bare dataset: its encoding is what reading it found
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.is_implicit_VR else ExplicitVRLittleEndian
        ds.file_meta = meta
    rows, cols = int(ds.Rows), int(ds.Columns)
    if _first_window(ds) is not None:
        min_size = shrink.oversampled(min_size)
    stored = _decode(path, ds, rows, cols, min_size)
    if stored.ndim == 3 and stored.shape[-1] in (3, 4):  # colour secondary captures: pydicom gives RGB
        import cv2

        gray = cv2.cvtColor(stored[..., :3], cv2.COLOR_RGB2GRAY)
        pixels = gray.astype(np.float32) / np.float32(np.iinfo(gray.dtype).max if gray.dtype.kind == "u" else 1)
    elif stored.ndim == 2:
        pixels = dicom_grayscale(stored, ds, min_size)
    else:
        raise ImageError(path, f"unexpected DICOM pixel array shape {stored.shape}")
    patient = {"name": str(ds.get("PatientName", "") or ""), "id": str(ds.get("PatientID", "") or "")}
    return pixels, _dicom_warnings(ds), patient, HeaderFacts.from_dataset(ds)


def _check_header(path: Any, ds: Any, max_pixels: int) -> None:
    """Everything the header alone can refuse, before a byte of pixel data is read."""
    if "Rows" not in ds and "Columns" not in ds:  # not an image object at all (a report, a presentation state)
        what = "" if "SOPClassUID" not in ds else f" (SOP class {ds.SOPClassUID.name})"
        raise ImageError(path, f"DICOM has no pixel data{what}")
    frames = _integer(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise ImageError(path, f"multi-frame DICOM ({frames} frames) is not supported; send a single radiograph")
    rows, cols = _integer(ds, "Rows", 0), _integer(ds, "Columns", 0)
    if rows <= 0 or cols <= 0:
        raise ImageError(path, f"image has no pixels ({cols}x{rows})")
    if rows * cols > max_pixels:
        raise ImageError(path, f"absurd size: {cols}x{rows} is {rows * cols / 1e6:.0f} megapixels, over the "
                               f"{max_pixels // 1_000_000} megapixel limit")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in PHOTOMETRIC:
        raise ImageError(path, f"unsupported DICOM photometric interpretation {photometric or '(missing)'!r}")


def _integer(ds: Any, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        return -1


def _decode(path: Any, ds: Any, rows: int, cols: int, min_size: tuple[int, int] | None) -> np.ndarray:
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax in _NATIVE_SYNTAXES:
        _check_native_length(path, ds, rows, cols)
    try:
        data = _first_frame(ds, syntax)
        if syntax in _JPEG_SYNTAXES:
            _check_jpeg_fragment(path, data)
        frame = codecs.Frame(ds, syntax, data, rows, cols, _integer(ds, "BitsStored", 0), min_size)
        stored, decoder = codecs.decode_stored(frame, syntax)
        log.debug("%s: %s decoded %s pixels", getattr(path, "name", path), decoder, "x".join(map(str, stored.shape)))
    except ImageError:
        raise
    except Exception as exc:
        name = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", None) or "unknown transfer syntax"
        raise ImageError(path, f"cannot decode DICOM pixel data ({name}): {_decoder_reason(exc)}") from exc
    return stored


def _first_frame(ds: Any, syntax: str) -> bytes:
    """The encoded frame of an encapsulated syntax, or the pixel data as stored for a native one."""
    if syntax in _NATIVE_SYNTAXES:
        return ds.PixelData
    from pydicom.encaps import generate_frames

    return next(generate_frames(ds.PixelData, number_of_frames=1), b"")


_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
                              "1.2.840.10008.1.2.2"})
"""Implicit and explicit VR little endian, deflated, big endian: pixel data stored as it is, its length known."""


def _check_native_length(path: Any, ds: Any, rows: int, cols: int) -> None:
    """Uncompressed pixel data must be exactly what the header describes: compressed fragments under a syntax that
    says uncompressed, or a length that does not fit Rows x Columns (a Columns one off), would be decoded into a
    sheared or shifted picture without a word."""
    element = ds["PixelData"]
    data = element.value or b""
    if element.is_undefined_length or data[:4] == b"\xfe\xff\x00\xe0":
        raise ImageError(path, f"the transfer syntax ({ds.file_meta.TransferSyntaxUID.name}) says uncompressed, "
                               "but the pixel data is in compressed fragments: the file meta names the wrong syntax")
    samples = _integer(ds, "SamplesPerPixel", 1)
    bits = _integer(ds, "BitsAllocated", 8)
    expected = (rows * cols * samples * bits + 7) // 8
    if len(data) not in (expected, expected + 1):  # one byte of padding makes an odd length even
        raise ImageError(path, f"the pixel data holds {len(data)} bytes, where {cols} x {rows} pixels of {bits} bits "
                               f"need {expected}: Rows and Columns do not describe the data")


def _decoder_reason(exc: BaseException) -> str:
    """The decoder's own message: pydicom wraps each plugin's failure under one summary line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "all available plugins" in lines[0]:
        return first_line(Exception(lines[1]))
    return first_line(exc)


def _check_jpeg_fragment(path: Any, frame: bytes) -> None:
    """A JPEG frame must end with its end-of-image marker (a fragment may carry one byte of padding after it)."""
    if not frame[-16:].rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageError(path, "truncated JPEG data in the DICOM file: the end-of-image marker is missing")


def dicom_grayscale(stored: np.ndarray, ds: Any, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Stored DICOM values to display values in [0, 1], in the order PS3.3 C.11 defines, on fewer pixels where
    that gives the same result.

    1. Modality LUT (rescale slope/intercept or a LUT; signed pixels handled by pydicom).
    2. VOI: a VOI LUT if present, else the first window; without either, the actual data range.
    3. MONOCHROME1 inversion over the VOI *output* range (here always [0, 1]), never over BitsStored, which a VOI
       LUT or window has already left behind.

    Towards `min_size` the image is averaged over blocks (`shrink`) as early as the result allows: before the
    rescale and a linear window (both affine; the window's clipping is applied to every pixel first, in the
    stored values, so that a block straddling the window's edge averages what the window would show), after a
    modality LUT table, and after a VOI LUT table or a sigmoid window, which bend every value.
    """
    from pydicom.pixels import apply_modality_lut

    with np.errstate(over="ignore", invalid="ignore"):  # a slope of inf or NaN: the sanity check names it
        table = "ModalityLUTSequence" in ds
        if table:  # a table indexed by stored values: map first, then average
            stored = apply_modality_lut(stored, ds)
        extent = np.array([stored.min(), stored.max()])  # every pixel's range, before averaging narrows it
        if _bends(ds):
            values = stored if table else apply_modality_lut(stored, ds)
            shown = shrink.shrink(_apply_voi(values.astype(np.float32, copy=False), ds, extent), min_size)
        else:
            values = shrink.shrink(stored, min_size, clip=_window_bounds(ds, rescaled=table))
            if not table:  # a linear rescale commutes with the average
                values, extent = apply_modality_lut(values, ds), apply_modality_lut(extent, ds)
            shown = _apply_voi(values.astype(np.float32, copy=False), ds, extent)  # float32: exact to 24 bits
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        shown = np.float32(1.0) - shown
    return shown.astype(np.float32, copy=False)


def _bends(ds: Any) -> bool:
    """Whether the VOI step is non-linear inside its range (a VOI LUT table, a sigmoid window)."""
    if ds.get("VOILUTSequence"):
        return True
    return _first_window(ds) is not None and str(ds.get("VOILUTFunction", "LINEAR")).upper() == "SIGMOID"


def _window_bounds(ds: Any, *, rescaled: bool) -> tuple[float, float] | None:
    """The values a linear window maps to 0 and 1, in stored values (or in modality values, `rescaled`), or None
    without a window (or with a rescale that cannot be inverted: the sanity check refuses such a file)."""
    window = _first_window(ds)
    if window is None:
        return None
    centre, width = window
    exact = str(ds.get("VOILUTFunction", "LINEAR")).upper() == "LINEAR_EXACT"
    low, high = (centre - width / 2, centre + width / 2) if exact else \
        (centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2)
    if rescaled:
        return low, high
    try:
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        return None
    ends = sorted(((low - intercept) / slope, (high - intercept) / slope))
    return ends[0], ends[1]


def _apply_voi(values: np.ndarray, ds: Any, extent: np.ndarray) -> np.ndarray:
    """The VOI step; without a LUT or window, the stretch uses `extent`, the range of every pixel's value (the
    reduced image's own range is narrower: averaging smooths the extremes away)."""
    voi_luts = ds.get("VOILUTSequence")
    if voi_luts:
        return _voi_lut(values, voi_luts[0])
    window = _first_window(ds)
    if window is not None:
        return _window(values, *window, str(ds.get("VOILUTFunction", "LINEAR")).upper())
    return _min_max(values, extent)


def _voi_lut(values: np.ndarray, item: Any) -> np.ndarray:
    """A VOI LUT (PS3.3 C.11.2.1.1) applied by cxr-edge itself.

    pydicom 3.0's ``apply_voi`` indexes a LUT whose descriptor says 8 bits with an 8-bit index, so a valid LUT of
    more than 256 entries wraps around (a 4096-entry 8-bit LUT decoded to 0-0.06). Here the index is the input
    value minus the first mapped value, clamped to the LUT's ends as the standard says, in full integer width.
    """
    count, first_mapped, bits = (int(v) for v in item.LUTDescriptor)
    count = count or 65536  # the standard's encoding of 2**16 entries
    lut = np.asarray(item.LUTData, dtype=np.float64).ravel()
    if bits == 8 and lut.size == count // 2 and lut.max(initial=0) > 255:  # 8-bit entries packed two to a word
        words = lut.astype(np.uint16)
        lut = np.stack([words & 0xFF, words >> 8], axis=1).ravel().astype(np.float64)
    if lut.size < count:
        raise ValueError(f"the VOI LUT holds {lut.size} entries, its descriptor {count}")
    finite = np.isfinite(values)
    index = np.clip(np.rint(np.where(finite, values, 0)).astype(np.int64) - first_mapped, 0, count - 1)
    top = max(float(2**bits - 1), float(lut[:count].max()))  # descriptors that under-state the depth: trust data
    shown = (lut[:count][index] / top).clip(0.0, 1.0).astype(np.float32) if top > 0 else np.zeros_like(values)
    return np.where(finite, shown, np.float32(np.nan))  # a broken rescale stays visible to the sanity check


def _first_window(ds: Any) -> tuple[float, float] | None:
    """The first of possibly several window presets, or None when there is none usable (missing, not numbers)."""
    from pydicom.multival import MultiValue

    def first(value: object) -> float:
        return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)

    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    try:
        centre, width = first(centre), first(width)
    except (TypeError, ValueError, IndexError):
        return None
    return (centre, width) if math.isfinite(centre) and math.isfinite(width) and width >= 1 else None


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


def _min_max(pixels: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """Stretch to [0, 1] by the data's range (non-finite values are left for the sanity check to refuse)."""
    pixels = pixels.astype(np.float32, copy=False)
    finite = pixels[np.isfinite(pixels)]
    if not finite.size:
        return pixels
    lo, hi = float(finite.min()), float(finite.max())
    if np.isfinite(extent).all():
        lo, hi = min(lo, float(extent.min())), max(hi, float(extent.max()))
    if hi <= lo:
        return np.full_like(pixels, 0.5, dtype=np.float32)
    return np.clip((pixels - np.float32(lo)) * np.float32(1 / (hi - lo)), 0.0, 1.0)  # rounding strays by 1e-7


def _dicom_warnings(ds: Any) -> tuple[str, ...]:
    """Doubts about what the DICOM shows; never includes patient identifiers."""
    found = HeaderFacts.from_dataset(ds).doubts()
    if str(ds.get("PresentationIntentType", "") or "").upper() == "FOR PROCESSING":
        found.append(RAW_DETECTOR_WARNING)
    has_window = ds.get("WindowCenter") is not None or ds.get("WindowWidth") is not None
    if has_window and not ds.get("VOILUTSequence") and _first_window(ds) is None:
        found.append("the file's window centre and width are not usable numbers (missing, not finite or a width "
                     "below 1): shown over the image's own range of values instead")
    return tuple(found)
