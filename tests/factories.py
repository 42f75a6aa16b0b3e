"""Makers of real test files: DICOM written with pydicom, rasters written with OpenCV, hand-built hostile headers."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
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


def dicom_in_syntax(pixels: np.ndarray, transfer_syntax: str, **kwargs: object) -> Dataset:
    """A radiograph (`dicom_dataset`) stored in `transfer_syntax`: JPEG Baseline made by OpenCV and encapsulated
    by pydicom, everything else compressed by pydicom's own encoders (RLE natively, JPEG 2000 through
    pylibjpeg-openjpeg)."""
    ds = dicom_dataset(pixels, **kwargs)
    if transfer_syntax == JPEGBaseline8Bit:
        ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([encoded.tobytes()])
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
    elif transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, pixels)
    return ds


def write_jpeg_dicom(path: Path, pixels: np.ndarray) -> Path:
    """An 8-bit image stored as JPEG Baseline."""
    dicom_in_syntax(pixels, JPEGBaseline8Bit, modality="CR", sop_class=ComputedRadiographyImageStorage).save_as(
        path, enforce_file_format=True)
    return path


def write_compressed_dicom(path: Path, pixels: np.ndarray, transfer_syntax: str, **kwargs: object) -> Path:
    """Compressed with pydicom's own encoders (RLE natively, JPEG 2000 through pylibjpeg-openjpeg)."""
    dicom_in_syntax(pixels, transfer_syntax, **kwargs).save_as(path, enforce_file_format=True)
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


CLASSES = ("normal", "covid19", "bacterial_pneumonia", "viral_pneumonia")


def tiny_onnx(path: Path, *, size: int = 32, channels: int = 1, classes: Sequence[str] = CLASSES, seed: int = 0,
              contract: bool = True, cam: bool = True, features: bool = False,
              extra_metadata: dict[str, str] | None = None, outputs: str = "softmax",
              operating_points: Sequence[float] = ()) -> Path:
    """A small real CAM network following the model contract, built with the onnx helper API.

    image (N x C x size x size) -> 3x3 conv, stride 4 -> cam (N x K x size/4 x size/4) -> mean -> softmax; with
    `features`, the pooled map (the logits) is also the ``features`` output. ``outputs="sigmoid"`` makes a
    multi-label model (independent findings, with `operating_points`).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cxr_edge.runtime.model.contract import Contract

    rng = np.random.default_rng(seed)
    k = len(classes)
    weight = rng.normal(scale=0.5, size=(k, channels, 3, 3)).astype(np.float32)
    bias = rng.normal(scale=0.1, size=(k,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "W", "B"], ["cam"], strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["cam", "axes"], ["logits"], keepdims=0),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]) if outputs == "sigmoid" else
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph_outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", k])]
    if cam:
        graph_outputs.append(helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", k, size // 4, size // 4]))
    if features:
        nodes.append(helper.make_node("Identity", ["logits"], ["features"]))
        graph_outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", k]))
    graph = helper.make_graph(
        nodes, "tiny_cam_net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, size, size])], graph_outputs,
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B"),
         numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="cxr-edge tests")
    model.ir_version = 8
    metadata = dict(extra_metadata or {})
    if contract:
        metadata |= Contract(input_size=(size, size), class_names=tuple(classes), channels=channels,
                             mean=(0.5,) * channels, std=(0.25,) * channels, outputs=outputs,
                             operating_points=tuple(operating_points)).to_metadata()
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def truncated(tmp_path: Path, suffix: str) -> Path:
    data = cv2.imencode(suffix, gradient(300, 300))[1].tobytes()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def bad_corpus(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Hostile and broken inputs, each with the words its error must contain."""
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("radiology report: no finding\n")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    no_pixels = dicom_dataset(gradient())
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "nopixels.dcm", enforce_file_format=True)
    frames = np.stack([gradient()] * 3)
    multi = dicom_dataset(frames[0], NumberOfFrames=3)
    multi.PixelData = frames.tobytes()
    multi.save_as(tmp_path / "multi.dcm", enforce_file_format=True)
    not_dicom = tmp_path / "fake.dcm"
    not_dicom.write_bytes(b"\x00" * 128 + b"DICX" + b"\x00" * 64)
    return {
        "empty": (tmp_path / "empty.png", "empty file"),
        "text named .png": (tmp_path / "notes.png", "not an image"),
        "0-byte DICOM": (tmp_path / "empty.dcm", "empty file"),
        "directory": (tmp_path / "folder.png", "not a regular file"),
        "missing": (tmp_path / "absent.png", "no such file"),
        "truncated JPEG": (truncated(tmp_path, ".jpg"), "truncated"),
        "truncated PNG": (truncated(tmp_path, ".png"), "truncated"),
        "DICOM without pixel data": (tmp_path / "nopixels.dcm", "no pixel data"),
        "multi-frame DICOM": (tmp_path / "multi.dcm", "multi-frame DICOM (3 frames)"),
        "60000x60000 PNG header": (png_header_only(tmp_path / "bomb.png", 60000, 60000), "absurd size"),
        "not DICOM": (not_dicom, "DICOM"),
    }


def tiny_int8(fp32: Path, out: Path, seed: int = 0) -> Path:
    """Real ONNX Runtime static INT8 quantisation of a tiny model, marked as cxr-edge marks its INT8 models."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_static

    shape = [d.dim_value or 1 for d in onnx.load(str(fp32)).graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    batches = iter([{"image": rng.normal(size=shape).astype(np.float32)} for _ in range(8)])

    class Reader:
        def get_next(self):
            return next(batches, None)

    quantize_static(str(fp32), str(out), Reader(), per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    model = onnx.load(str(out))
    original = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    del model.metadata_props[:]
    for key, value in (original | {"cxr_edge.quantization": '{"tool": "tests"}'}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    return out


def htj2k_codestream(stored: np.ndarray) -> bytes:
    """A High-Throughput JPEG 2000 codestream made by OpenJPH (through imagecodecs), lossless, five levels."""
    import imagecodecs

    return bytes(imagecodecs.htj2k_encode(stored, resolutions=6))


def jph_file(path: Path, stored: np.ndarray) -> Path:
    """A .jph file (ISO/IEC 15444-15 file format): the JP2 boxes around an HTJ2K codestream, brand 'jph '."""
    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", 8 + len(payload)) + kind + payload

    bits = stored.dtype.itemsize * 8  # OpenJPH codes 16-bit words as 16-bit samples
    header = box(b"ihdr", struct.pack(">IIHBBBB", *stored.shape[:2], 1, bits - 1, 7, 0, 0))
    colour = box(b"colr", struct.pack(">BBBI", 1, 0, 0, 17))  # enumerated, greyscale
    path.write_bytes(box(b"jP  ", b"\r\n\x87\n") + box(b"ftyp", b"jph " + struct.pack(">I", 0) + b"jph ")
                     + box(b"jp2h", header + colour) + box(b"jp2c", htj2k_codestream(stored)))
    return path


def every_syntax(stored: np.ndarray, folder: Path, **attributes: object) -> dict[str, Path]:
    """One 15- or 16-bit radiograph in every transfer syntax the runtime reads, written by real encoders: pydicom
    (RLE, JPEG 2000, deflate), dcmtk (JPEG lossless and extended, JPEG-LS) and OpenJPH (HTJ2K).

    Returns file paths by transfer syntax UID; the syntaxes whose encoder is not installed are missing.
    """
    import shutil
    import subprocess

    from pydicom.uid import (
        JPEG2000,
        DeflatedExplicitVRLittleEndian,
        HTJ2KLossless,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        RLELossless,
    )

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def save(name: str, ds: Dataset, syntax: str | None = None) -> Path:
        path = folder / f"{name}.dcm"
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian or None)
        files[str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)] = path
        return path

    plain = save("explicit", dicom_dataset(stored, **attributes))
    save("implicit", dicom_dataset(stored, **attributes), ImplicitVRLittleEndian)
    save("deflated", dicom_dataset(stored, **attributes), DeflatedExplicitVRLittleEndian)
    for name, syntax, extra in (("rle", RLELossless, {}), ("j2k-lossless", JPEG2000Lossless, {}),
                                ("j2k", JPEG2000, {"j2k_cr": [15]})):
        ds = dicom_dataset(stored, **attributes)
        ds.compress(syntax, stored, **extra)
        save(name, ds)
    ds = dicom_dataset(stored, **attributes)
    ds.PixelData = encapsulate([htj2k_codestream(stored)])
    ds["PixelData"].is_undefined_length = True
    save("htj2k", ds, HTJ2KLossless)
    twelve = folder / ".twelve.dcm"
    unwindowed = {key: value for key, value in attributes.items() if not key.startswith("Window")}
    dicom_dataset((stored >> max(0, int(stored.max()).bit_length() - 12)).astype(np.uint16),
                  **(unwindowed | {"bits_stored": 12})).save_as(twelve, enforce_file_format=True)
    for tool, option, source in (("dcmcjpeg", "+e1", plain), ("dcmcjpeg", "+el", plain),
                                 ("dcmcjpeg", "+ee", twelve), ("dcmcjpls", "+el", plain), ("dcmcjpls", "+en", plain)):
        if shutil.which(tool):
            out = folder / f"{tool}{option.strip('+')}.dcm"
            subprocess.run([tool, option, str(source), str(out)], check=True, capture_output=True)
            files[str(pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID)] = out
    twelve.unlink()
    return files
