"""Makers of real test files: DICOM written with pydicom, rasters written with OpenCV, hand-built hostile headers."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

PATIENT_NAME = "Doe^Jane^Secret"
PATIENT_ID = "PID-73310-SECRET"


def gradient(height: int = 96, width: int = 80, top: int = 255) -> np.ndarray:
    """A deterministic image with structure in both axes (so flips, inversions and crops are detectable)."""
    y, x = np.mgrid[0:height, 0:width]
    image = (x / (width - 1)) * 0.7 + (y / (height - 1)) * 0.3
    image[height // 4: height // 2, width // 4: width // 2] = 1.0
    return np.round(image * top).astype(np.uint16 if top > 255 else np.uint8)


def dicom_dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                  signed: bool = False, modality: str = "DX", sop_class: str = DigitalXRayImageStorageForPresentation,
                  **attributes: object) -> Dataset:
    """A complete single-frame DICOM radiograph around `pixels` (uncompressed, explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    allocated = pixels.dtype.itemsize * 8
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for name, value in attributes.items():
        setattr(ds, name, value)
    return ds


def write_dicom(path: Path, pixels: np.ndarray, **kwargs: object) -> Path:
    dicom_dataset(pixels, **kwargs).save_as(path, enforce_file_format=True)
    return path


def write_jpeg_dicom(path: Path, pixels: np.ndarray) -> Path:
    """An 8-bit image stored as JPEG Baseline (the codestream made by OpenCV, encapsulated by pydicom)."""
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    ds = dicom_dataset(pixels, modality="CR", sop_class=ComputedRadiographyImageStorage)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([encoded.tobytes()])
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_compressed_dicom(path: Path, pixels: np.ndarray, transfer_syntax: str, **kwargs: object) -> Path:
    """Compressed with pydicom's own encoders (RLE natively, JPEG 2000 through pylibjpeg-openjpeg)."""
    ds = dicom_dataset(pixels, **kwargs)
    ds.compress(transfer_syntax, pixels)
    ds.save_as(path, enforce_file_format=True)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR claiming an enormous size, with one tiny IDAT: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(path)
