"""Which decoder reads each DICOM transfer syntax: the fastest exact one installed, chosen by measurement.

`DECODERS` names every candidate the runtime knows, `ORDER` lists for each transfer syntax the candidates to try,
fastest first, as measured on the same real 15-bit chest CR in every syntax (``benchmarks/decoders.py``, table in
``benchmarks/decode/decoders.md``). pydicom's own choice among its plugins (`PYDICOM`) always ends the list, so an
image is never refused because an optional decoder is missing: a candidate that is not installed, does not cover
the image (signed or colour pixels, several frames) or fails on it is skipped with a ``--debug`` line, and the
next one decodes. The fast candidates take only single-frame, unsigned, one-sample images, where their output is
the stored values pydicom would give (``tests/runtime/test_codecs.py`` compares every syntax with pydicom).

Reducing decoders (JPEG 2000 and HTJ2K resolution levels) return fewer pixels when the caller's `min_size`
allows; their output holds the same stored values at a lower resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from . import jpeg2000, shrink

__all__ = ["Decoder", "Frame", "DECODERS", "ORDER", "PYDICOM", "TRANSFER_SYNTAXES", "decode_stored", "candidates",
           "installed"]

log = logging.getLogger(__name__)

BASELINE, EXTENDED = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"
LOSSLESS, LOSSLESS_SV1 = "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"
JPEG_LS, JPEG_LS_NEAR = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS, J2K = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K = "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"
RLE = "1.2.840.10008.1.2.5"
NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")


@dataclass(frozen=True)
class Frame:
    """One encoded frame and what the header says it holds."""

    ds: Any
    syntax: str
    data: bytes
    rows: int
    columns: int
    bits_stored: int
    min_size: tuple[int, int] | None

    @property
    def plain(self) -> bool:
        """Unsigned, one sample, one frame: the images the fast decoders are checked on."""
        ds = self.ds
        return (int(ds.get("PixelRepresentation", 0) or 0) == 0 and int(ds.get("SamplesPerPixel", 1) or 1) == 1
                and int(ds.get("NumberOfFrames", 1) or 1) == 1)


@dataclass(frozen=True)
class Decoder:
    """A decoder candidate: `run` returns stored values, or None where it does not cover the frame."""

    name: str
    module: str
    syntaxes: frozenset[str]
    run: Callable[[Frame], np.ndarray | None]
    reduces: bool = False
    strict: bool = False
    """Its failure is the verdict on the data (a corrupt scan), not a reason to try a more lenient decoder."""


def _native(frame: Frame) -> np.ndarray | None:
    """Uncompressed 8- or 16-bit data read in place, its unused high bits cleared only when any are set."""
    bits = int(frame.ds.get("BitsAllocated", 0) or 0)
    if not frame.plain or bits not in (8, 16):
        return None
    dtype = np.dtype("u1" if bits == 8 else "u2").newbyteorder(">" if frame.syntax == NATIVE[-1] else "<")
    stored = np.frombuffer(frame.data, dtype, count=frame.rows * frame.columns).reshape(frame.rows, frame.columns)
    if 0 < frame.bits_stored < bits and int(stored.max()) >> frame.bits_stored:  # overlay bits or noise above
        stored = stored & dtype.type(2**frame.bits_stored - 1)
    return stored.astype(dtype.newbyteorder("="), copy=False)


def _imagecodecs(function: str) -> Callable[[Frame], np.ndarray | None]:
    def run(frame: Frame) -> np.ndarray | None:
        import imagecodecs

        return getattr(imagecodecs, function)(frame.data) if frame.plain else None
    return run


def _simplejpeg(frame: Frame) -> np.ndarray | None:
    if not frame.plain or int(frame.ds.get("BitsAllocated", 0)) != 8:
        return None
    import simplejpeg

    return simplejpeg.decode_jpeg(frame.data, colorspace="GRAY", strict=True)[..., 0]


def _dicomrle(frame: Frame) -> np.ndarray | None:
    """DICOM RLE (PS3.5 G) by imagecodecs: the segments give bytes, the header their width and order."""
    if not frame.plain or int(frame.ds.get("BitsAllocated", 0)) not in (8, 16):
        return None
    import imagecodecs

    dtype = np.dtype(">u2" if int(frame.ds.BitsAllocated) == 16 else "u1")  # segments: most significant byte first
    decoded = np.frombuffer(imagecodecs.dicomrle_decode(frame.data, dtype.str), dtype)
    if decoded.size != frame.rows * frame.columns:
        return None
    return decoded.reshape(frame.rows, frame.columns).astype(dtype.newbyteorder("="))


def _pyjpegls(frame: Frame) -> np.ndarray | None:
    import jpeg_ls

    return jpeg_ls.decode(np.frombuffer(frame.data, np.uint8)) if frame.plain else None


def _glymur_reduced(frame: Frame) -> np.ndarray | None:
    if not frame.plain or frame.min_size is None:
        return None
    return jpeg2000.decode(frame.data, frame.min_size, bits_stored=frame.bits_stored or None, signed=False,
                           bits_allocated=int(frame.ds.get("BitsAllocated", 0) or 0) or None)


def _openjph_reduced(frame: Frame) -> np.ndarray | None:
    """HTJ2K through OpenJPH, skipping the resolution levels the model does not need."""
    if not frame.plain or frame.min_size is None:
        return None
    import imagecodecs

    levels = jpeg2000.codestream_levels(frame.data)
    if levels is None:
        return None
    skip = jpeg2000.reduction(frame.rows, frame.columns, frame.min_size, levels)
    if not skip:
        return None
    return shrink.trim(imagecodecs.htj2k_decode(frame.data, skipres=skip), frame.rows, frame.columns, 2 ** skip)


def _pydicom_plugin(plugin: str) -> Callable[[Frame], np.ndarray | None]:
    def run(frame: Frame) -> np.ndarray | None:
        from pydicom.pixels import get_decoder

        return get_decoder(frame.ds.file_meta.TransferSyntaxUID).as_array(frame.ds, decoding_plugin=plugin)[0]
    return run


def _pydicom(frame: Frame) -> np.ndarray:
    return frame.ds.pixel_array


_ALL_JPEG = frozenset({BASELINE, EXTENDED, LOSSLESS, LOSSLESS_SV1})
_ALL_J2K = frozenset({J2K_LOSSLESS, J2K, HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K})
_ALL_LS = frozenset({JPEG_LS, JPEG_LS_NEAR})
_HT = frozenset({HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K})

PYDICOM = Decoder("pydicom (its own choice of plugin)", "pydicom", frozenset(), _pydicom)
DECODERS: dict[str, Decoder] = {decoder.name: decoder for decoder in (
    Decoder("numpy (in place)", "numpy", frozenset(NATIVE), _native),
    Decoder("simplejpeg (libjpeg-turbo)", "simplejpeg", frozenset({BASELINE}), _simplejpeg, strict=True),
    Decoder("imagecodecs jpeg8 (libjpeg-turbo 3)", "imagecodecs", _ALL_JPEG, _imagecodecs("jpeg8_decode")),
    Decoder("imagecodecs ljpeg (liblj92)", "imagecodecs", frozenset({LOSSLESS, LOSSLESS_SV1}),
            _imagecodecs("ljpeg_decode")),
    Decoder("imagecodecs jpegls (CharLS)", "imagecodecs", _ALL_LS, _imagecodecs("jpegls_decode")),
    Decoder("pyjpegls (CharLS)", "jpeg_ls", _ALL_LS, _pyjpegls),
    Decoder("glymur (OpenJPEG), reduced", "glymur", _ALL_J2K, _glymur_reduced, reduces=True),
    Decoder("imagecodecs htj2k (OpenJPH), reduced", "imagecodecs", _HT, _openjph_reduced, reduces=True),
    Decoder("imagecodecs jpeg2k (OpenJPEG)", "imagecodecs", _ALL_J2K, _imagecodecs("jpeg2k_decode")),
    Decoder("imagecodecs htj2k (OpenJPH)", "imagecodecs", _HT, _imagecodecs("htj2k_decode")),
    Decoder("imagecodecs dicomrle", "imagecodecs", frozenset({RLE}), _dicomrle),
    Decoder("pydicom + pylibjpeg", "pylibjpeg", _ALL_JPEG | _ALL_LS | _ALL_J2K | {RLE}, _pydicom_plugin("pylibjpeg")),
    Decoder("pydicom + gdcm", "gdcm", _ALL_JPEG | _ALL_LS | frozenset({J2K_LOSSLESS, J2K}), _pydicom_plugin("gdcm")),
    Decoder("pydicom + pyjpegls", "jpeg_ls", _ALL_LS, _pydicom_plugin("pyjpegls")),
    Decoder("pydicom (numpy RLE)", "pydicom", frozenset({RLE}), _pydicom_plugin("pydicom")),
)}
"""Every candidate, by the name the benchmark table uses."""

# Measured but not in ORDER: OpenJPH's reduced HTJ2K decode (0.3 ms) wraps wavelet values below zero to the top
# of the range (hundreds of pixels of a CR's white border come out near 61000 of 65535), so OpenJPEG's reduced
# decode, which clamps, reads HTJ2K at reduced size; pydicom's numpy RLE and pylibjpeg's JPEG-LS are slower than
# their alternatives everywhere.
ORDER: dict[str, tuple[str, ...]] = {
    **{syntax: ("numpy (in place)",) for syntax in NATIVE},
    BASELINE: ("simplejpeg (libjpeg-turbo)",),
    EXTENDED: ("imagecodecs jpeg8 (libjpeg-turbo 3)",),
    LOSSLESS: ("imagecodecs jpeg8 (libjpeg-turbo 3)", "imagecodecs ljpeg (liblj92)"),
    LOSSLESS_SV1: ("imagecodecs jpeg8 (libjpeg-turbo 3)", "imagecodecs ljpeg (liblj92)"),
    JPEG_LS: ("imagecodecs jpegls (CharLS)", "pyjpegls (CharLS)"),
    JPEG_LS_NEAR: ("imagecodecs jpegls (CharLS)", "pyjpegls (CharLS)"),
    J2K_LOSSLESS: ("glymur (OpenJPEG), reduced",),
    J2K: ("glymur (OpenJPEG), reduced",),
    HTJ2K_LOSSLESS: ("glymur (OpenJPEG), reduced", "imagecodecs htj2k (OpenJPH)"),
    HTJ2K_RPCL: ("glymur (OpenJPEG), reduced", "imagecodecs htj2k (OpenJPH)"),
    HTJ2K: ("glymur (OpenJPEG), reduced", "imagecodecs htj2k (OpenJPH)"),
    RLE: ("imagecodecs dicomrle", "pydicom + pylibjpeg"),
}
"""Per transfer syntax, the candidates to try before pydicom, fastest first (benchmarks/decode/decoders.md)."""


TRANSFER_SYNTAXES = (NATIVE[1], NATIVE[0], *(syntax for syntax in ORDER if syntax not in NATIVE))
"""Every transfer syntax read here, explicit and implicit little endian first (what a DICOM node accepts)."""


@cache
def installed(module: str) -> bool:
    """Whether a decoder's module imports here (once per process: a failed import is not retried per image)."""
    try:
        __import__(module)
    except Exception as exc:  # ImportError, or a binary that does not load on this CPU
        log.debug("decoder module %s is not usable here: %s", module, exc)
        return False
    return True


def candidates(syntax: str) -> tuple[Decoder, ...]:
    """Every known decoder of a transfer syntax, installed or not (for the benchmark)."""
    return tuple(decoder for decoder in DECODERS.values() if syntax in decoder.syntaxes)


def decode_stored(frame: Frame, syntax: str) -> tuple[np.ndarray, str]:
    """The stored values of a frame, and the name of the decoder that gave them.

    Raises:
        whatever pydicom raises when no candidate decoded the frame and pydicom cannot either.
    """
    for name in ORDER.get(syntax, ()):
        decoder = DECODERS[name]
        if not installed(decoder.module):
            log.debug("%s is not installed: trying the next decoder", name)
            continue
        try:
            stored = decoder.run(frame)
        except Exception as exc:  # a decoder that refuses the data: the next one (and finally pydicom) judges it
            if decoder.strict:
                raise
            log.debug("%s failed (%s: %s): trying the next decoder", name, type(exc).__name__, exc)
            continue
        if stored is not None and _fits(stored, frame, decoder.reduces):
            return stored, name
        log.debug("%s does not cover this image: trying the next decoder", name)
    return PYDICOM.run(frame), PYDICOM.name


def _fits(stored: np.ndarray, frame: Frame, reduced: bool) -> bool:
    """A fast decoder's output must be what the header describes: 2-D unsigned integers of the right size."""
    if stored.ndim != 2 or stored.dtype.kind != "u":
        return False
    if not reduced:
        return stored.shape == (frame.rows, frame.columns)
    return 0 < stored.shape[0] <= frame.rows and 0 < stored.shape[1] <= frame.columns
