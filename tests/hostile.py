"""A corpus of bad inputs generated at test time: broken, unusable and hostile images, DICOM and file-system
layouts, each with the outcome the loader owes it.

Every case is one class of failure seen in the field or in an attack: decoded pixels that cannot be a radiograph
(non-finite, flat, without contrast, wrapped by a VOI LUT), damaged compressed data, absurd sizes and decoder
time bombs, and paths that are not plain files. Nothing here is committed as an image: it is all written by code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from tests.factories import dicom_dataset, dicom_in_syntax, gradient, png_header_only, write_dicom

__all__ = ["Case", "image_cases", "layout_cases", "GOOD"]

GOOD = "good.png"
"""The one readable radiograph-like image every corpus folder also holds: it must always be predicted."""


@dataclass(frozen=True)
class Case:
    """One input and what reading it must give.

    Args:
        name: the class of failure, for test ids.
        path: the file (or link, folder, pipe).
        refused: words the one-line refusal must contain; None if the file must be read.
        warned: words a warning must contain when the file is read.
    """

    name: str
    path: Path
    refused: str | None = None
    warned: str | None = None


def _png(path: Path, image: np.ndarray) -> Path:
    """Encoded in memory: OpenCV's own file writer crashes on a name that is not UTF-8."""
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def _tiff(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


def _save(path: Path, ds: Dataset, *, file_format: bool = True) -> Path:
    ds.save_as(path, enforce_file_format=file_format)
    return path


def _float_image(fill: Callable[[np.ndarray], None]) -> np.ndarray:
    image = gradient(96, 96).astype(np.float32) / 255
    fill(image)
    return image


def _damage_fragment(ds: Dataset, *, cut: float | None = None, scramble: bool = False) -> Dataset:
    """Truncate (keeping or re-appending an end marker) or scramble the middle of a compressed frame."""
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    if scramble:
        middle = len(frame) // 3
        frame[middle: middle + max(16, len(frame) // 4)] = np.random.default_rng(1).integers(
            0, 256, max(16, len(frame) // 4), dtype=np.uint8).tobytes()
    if cut is not None:
        frame = frame[: int(len(frame) * cut)]
    ds.PixelData = encapsulate([bytes(frame)])
    ds["PixelData"].is_undefined_length = True
    return ds


def _jpeg(image: np.ndarray, **params: int) -> bytes:
    flags = [item for pair in params.items() for item in (getattr(cv2, pair[0]), pair[1])]
    ok, encoded = cv2.imencode(".jpg", image, flags)
    assert ok
    return encoded.tobytes()


def _many_scans(image: np.ndarray, copies: int) -> bytes:
    """A progressive JPEG whose scans are repeated `copies` times: hundreds of scans in a few kilobytes."""
    data = _jpeg(image, IMWRITE_JPEG_PROGRESSIVE=1)
    first = data.index(b"\xff\xda")
    return data[:first] + data[first:-2] * copies + b"\xff\xd9"


def noisy_film() -> np.ndarray:
    """A 600 x 520 gradient with noise: enough entropy-coded data for damage in its middle to land in a scan."""
    image = cv2.resize(gradient(300, 260), (520, 600)).astype(np.float32)
    return (image + np.random.default_rng(0).normal(0, 6, image.shape)).clip(0, 255).astype(np.uint8)


def _bad_marker(image: np.ndarray) -> bytes:
    """A JPEG whose scan holds a marker that cannot be there (a stuffed FF 00 turned into FF 28)."""
    data = bytearray(_jpeg(image))
    at = data.find(b"\xff\x00", len(data) // 2)
    data[at + 1] = 0x28
    return bytes(data)


def _flip_middle(encoded: np.ndarray) -> bytes:
    """One byte in the middle inverted: for a PNG, a CRC error in an IDAT chunk (libpng prints it itself)."""
    data = bytearray(encoded.tobytes())
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def _dcmtk(tool: str, source: Path, target: Path, *args: str) -> Path:
    subprocess.run([shutil.which(tool) or tool, *args, str(source), str(target)], check=True, capture_output=True)
    return target


def image_cases(folder: Path) -> list[Case]:
    """Write every bad-file case into `folder` (and the good image), returning the cases."""
    folder.mkdir(parents=True, exist_ok=True)
    f = folder
    film = gradient(96, 96)
    film16 = gradient(96, 96, top=4095)
    _png(f / GOOD, gradient(128, 128))
    cases = [
        # not images, or not whole
        Case("empty", _write(f / "empty.png", b""), "empty file"),
        Case("text", _write(f / "notes.png", b"radiology report: no finding\n"), "not an image"),
        Case("zip", _write(f / "archive.jpg", b"PK\x03\x04" + b"\x00" * 200), "ZIP"),
        Case("truncated PNG", _write(f / "cut.png", cv2.imencode(".png", gradient(300, 300))[1].tobytes()[:3000]),
             "PNG"),
        Case("JPEG cut mid-scan, EOI appended",
             _write(f / "cut_eoi.jpg", (lambda d: d[: len(d) * 2 // 3] + b"\xff\xd9")(_jpeg(gradient(300, 300)))),
             "JPEG"),
        Case("JPEG cut mid-scan", _write(f / "cut.jpg", _jpeg(gradient(300, 300))[:2000]), "truncated JPEG"),
        Case("JPEG with a marker inside its scan", _write(f / "marker.jpg", _bad_marker(noisy_film())),
             "Unsupported marker"),
        Case("PNG with a damaged IDAT", _write(f / "crc.png", _flip_middle(cv2.imencode(".png", noisy_film())[1])),
             "PNG"),
        Case("JPEG of 600 scans", _write(f / "scans.jpg", _many_scans(gradient(256, 256), 60)), "scans"),
        Case("PNG claiming 60000x60000", png_header_only(f / "bomb.png", 60000, 60000), "absurd size"),
        Case("1x1 PNG", _png(f / "dot.png", np.full((1, 1), 200, np.uint8)), "only 1x1"),
        Case("16x16 PNG", _png(f / "thumb.png", gradient(16, 16)), "only 16x16"),
        Case("black PNG", _png(f / "black.png", np.zeros((96, 96), np.uint8)), "flat"),
        Case("white PNG", _png(f / "white.png", np.full((96, 96), 255, np.uint8)), "flat"),
        Case("gray PNG", _png(f / "gray.png", np.full((96, 96), 128, np.uint16) * 200), "flat"),
        Case("noise within 2 levels", _png(f / "faint.png", (np.random.default_rng(0).integers(0, 3, (96, 96))
                                                            + 120).astype(np.uint8)), "contrast"),
        Case("10-bit data in a 16-bit PNG", _png(f / "ten.png", gradient(96, 96, top=900)), warned="10-bit"),
        Case("nearly black 16-bit PNG", _png(f / "dim16.png", gradient(96, 96, top=300)), "nearly black"),
        Case("12-bit data in a 16-bit PNG", _png(f / "twelve.png", film16), warned="12-bit"),
        Case("float TIFF of NaN", _tiff(f / "nan.tif", np.full((96, 96), np.nan, np.float32)), "not finite"),
        Case("float TIFF with one NaN", _tiff(f / "nan1.tif", _float_image(lambda a: a.__setitem__((5, 5), np.nan))),
             "not finite"),
        Case("float TIFF with infinity", _tiff(f / "inf.tif", _float_image(lambda a: a.__setitem__((5, 5), np.inf))),
             "not finite"),
        Case("float TIFF of +-3e38", _tiff(f / "huge.tif", ((gradient(96, 96) / 127.5 - 1) * 3e38).astype(np.float32)),
             "span"),
        Case("float TIFF of denormals", _tiff(f / "denormal.tif", _float_image(lambda a: a.__imul__(1e-40))),
             "span"),
        Case("multi-page TIFF", _multipage(f / "pages.tif", film), "multi-page"),
        # DICOM: decoded values that cannot be right
        Case("window centre NaN", _save(f / "wc_nan.dcm", _with(dicom_dataset(film16, bits_stored=12),
                                                                 WindowCenter="NaN", WindowWidth="400")),
             warned="window"),
        Case("rescale slope 0", _save(f / "slope0.dcm", _with(dicom_dataset(film16, bits_stored=12),
                                                             RescaleSlope="0", RescaleIntercept="0")), "flat"),
        Case("rescale slope NaN", _save(f / "slopenan.dcm", _with(dicom_dataset(film16, bits_stored=12),
                                                                 RescaleSlope="NaN", RescaleIntercept="0")),
             "not finite"),
        Case("rescale slope inf", _save(f / "slopeinf.dcm", _with(dicom_dataset(film16, bits_stored=12),
                                                                 RescaleSlope="inf", RescaleIntercept="0")),
             "not finite"),
        Case("window outside the data", _save(f / "wc_out.dcm", _with(dicom_dataset(film16, bits_stored=12),
                                                                     WindowCenter="60000", WindowWidth="100")),
             "flat"),
        Case("1x1 DICOM", _save(f / "dot.dcm", dicom_dataset(np.full((1, 1), 100, np.uint16), bits_stored=12)),
             "only 1x1"),
        Case("4096-entry 8-bit VOI LUT", _save(f / "voilut.dcm", _voi_lut(film16, "MONOCHROME2")), None),
        Case("4096-entry 8-bit VOI LUT, MONOCHROME1", _save(f / "voilut_m1.dcm", _voi_lut(film16, "MONOCHROME1")),
             None),
        Case("DICOM 100000x100000", _save(f / "bomb.dcm", _with(dicom_dataset(film), Rows=50000, Columns=50000)),
             "absurd size"),
        Case("DICOM pixel data too short", _save(f / "short.dcm", _with(dicom_dataset(film), Rows=200)),
             "pixel data"),
        Case("palette colour DICOM", _save(f / "palette.dcm", dicom_dataset(film, photometric="PALETTE COLOR")),
             "photometric"),
        Case("DICOM without pixel data", _save(f / "nopix.dcm", _without_pixels(dicom_dataset(film))),
             "no pixel data"),
        Case("bare implicit-VR dataset", _bare_implicit(f / "bare.dcm", film), None),
        Case("DICOM with invalid PatientAge and PatientBirthDate",
             _save(f / "badage.dcm", _with(dicom_dataset(film), PatientAge="ABCD-SECRET-AGE",
                                           PatientBirthDate="SECRET-BIRTH")), None),
        # damaged compressed DICOM
        Case("JPEG fragment cut", _save(f / "jpeg_cut.dcm", _damage_fragment(dicom_in_syntax(gradient(256, 256),
                                                                                              JPEGBaseline8Bit),
                                                                              cut=0.6)), "end-of-image"),
        Case("JPEG fragment cut, EOI appended",
             _save(f / "jpeg_cut_eoi.dcm", _append_eoi(_damage_fragment(dicom_in_syntax(gradient(256, 256),
                                                                                         JPEGBaseline8Bit), cut=0.6))),
             "JPEG"),
        Case("JPEG 2000 fragment scrambled",
             _save(f / "j2k_bad.dcm", _damage_fragment(dicom_in_syntax(film16, JPEG2000Lossless, bits_stored=12),
                                                       cut=0.3)), "JPEG 2000"),
        Case("HTJ2K fragment cut", _save(f / "htj2k_bad.dcm", _as_htj2k(_damage_fragment(
            dicom_in_syntax(film16, JPEG2000Lossless, bits_stored=12), cut=0.3))), "JPEG 2000"),
        Case("RLE fragment cut", _save(f / "rle_bad.dcm", _damage_fragment(dicom_in_syntax(film16, RLELossless,
                                                                                         bits_stored=12), cut=0.4)),
             "RLE"),
    ]
    if shutil.which("dcmcjpls"):
        plain = write_dicom(f / ".plain16.dcm", film16, bits_stored=12)
        jls = _dcmtk("dcmcjpls", plain, f / ".jls.dcm")
        from pydicom import dcmread

        cases.append(Case("JPEG-LS fragment cut", _save(f / "jls_bad.dcm", _damage_fragment(dcmread(jls), cut=0.4)),
                          "end-of-image"))
        plain.unlink()
        jls.unlink()
    return cases


def layout_cases(folder: Path) -> list[Case]:
    """File-system oddities: links that loop or lead nowhere, a pipe, a folder named like an image, names with
    terminal escapes or bytes that are not UTF-8, and a path longer than the system allows."""
    folder.mkdir(parents=True, exist_ok=True)
    f = folder
    _png(f / GOOD, gradient(128, 128))
    os.symlink("self.png", f / "self.png")
    os.symlink("loop_b.png", f / "loop_a.png")
    os.symlink("loop_a.png", f / "loop_b.png")
    os.symlink("gone.png", f / "broken.png")
    os.mkfifo(f / "pipe.png")
    (f / "folder.png").mkdir()
    os.symlink("..", f / "up")  # a link to a folder above: a recursive walk must not loop
    escape = f / "\x1b[2J\x1b[31mred.png"
    _png(escape, gradient(128, 128))
    undecodable = Path(os.fsdecode(bytes(f) + b"/\xff\xfename.png"))
    _png(undecodable, gradient(128, 128))
    return [
        Case("self link", f / "self.png", "symbolic link loop"),
        Case("link loop", f / "loop_a.png", "symbolic link loop"),
        Case("broken link", f / "broken.png", "no such file"),
        Case("named pipe", f / "pipe.png", "not a regular file"),
        Case("terminal escapes in the name", escape, None),
        Case("name that is not UTF-8", undecodable, None),
        Case("path over PATH_MAX", f.joinpath(*["x" * 250] * 20, "a.png"), "too long"),
    ]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _with(ds: Dataset, **attributes: object) -> Dataset:
    from pydicom import config

    saved = config.settings.writing_validation_mode, config.settings.reading_validation_mode
    config.settings.writing_validation_mode = config.settings.reading_validation_mode = config.IGNORE
    try:
        for name, value in attributes.items():
            setattr(ds, name, value)
    finally:
        config.settings.writing_validation_mode, config.settings.reading_validation_mode = saved
    return ds


def _voi_lut(pixels: np.ndarray, photometric: str) -> Dataset:
    """A valid VOI LUT of 4096 entries with 8-bit output: a linear ramp over the 12-bit data."""
    ds = dicom_dataset(pixels, bits_stored=12, photometric=photometric)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.add_new(0x00283006, "US", (np.arange(4096) * 255 // 4095).astype(np.uint16).tolist())  # LUT Data
    ds.VOILUTSequence = DicomSequence([item])
    return ds


def _without_pixels(ds: Dataset) -> Dataset:
    del ds.PixelData
    return ds


def _bare_implicit(path: Path, pixels: np.ndarray) -> Path:
    """A dataset without preamble or file meta, in implicit VR little endian, as some old PACS export it."""
    from pydicom.filewriter import dcmwrite

    ds = dicom_dataset(pixels)
    del ds.file_meta
    with open(path, "wb") as handle:
        dcmwrite(handle, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert not path.read_bytes()[128:132] == b"DICM"
    return path


def _append_eoi(ds: Dataset) -> Dataset:
    frame = next(generate_frames(ds.PixelData, number_of_frames=1)) + b"\xff\xd9"
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].is_undefined_length = True
    return ds


def _as_htj2k(ds: Dataset) -> Dataset:
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless  # an HTJ2K decoder reads part-1 codestreams too
    return ds


def _multipage(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwritemulti(str(path), [image, image])
    return path

