"""JPEG 2000 at reduced resolution: the same answers as the full decode, for DICOM and for .jp2/.j2k files."""

from __future__ import annotations

import cv2
import glymur
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000, JPEG2000Lossless

from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.contract import READ_TOLERANCE
from cxr_edge.runtime.reading import jpeg2000
from cxr_edge.runtime.reading.images import load_image, read_image
from cxr_edge.runtime.reading.shrink import FULL_DECODE_ENV
from tests.factories import gradient, write_compressed_dicom


@pytest.fixture()
def full_decode(monkeypatch):
    """Turn every reduced read off, as `CXR_EDGE_FULL_DECODE=1` does."""
    def off():
        monkeypatch.setenv(FULL_DECODE_ENV, "1")
        jpeg2000.available.cache_clear()
    yield off
    jpeg2000.available.cache_clear()


def _cr(film: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A film as a 15-bit MONOCHROME1 computed radiograph of detector size."""
    big = cv2.resize(film, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip((1.0 - big) * 32767, 0, 32767).astype(np.uint16)


@pytest.mark.parametrize("height, width, expected", [(1955, 1841, 3), (1000, 1000, 2), (448, 448, 1), (447, 448, 1),
                                                     (446, 448, 0),
                                                     (300, 280, 0), (8000, 8000, 5)])
def test_the_largest_level_that_still_covers_the_input(height, width, expected):
    assert jpeg2000.reduction(height, width, (224, 224), levels=5) == expected


def test_level_zero_is_pixel_identical_to_pydicom(tmp_path):
    stored = gradient(300, 280, top=4095)
    path = write_compressed_dicom(tmp_path / "j2k.dcm", stored, JPEG2000Lossless, bits_stored=12)
    frame = next(pydicom.encaps.generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
    assert jpeg2000.decode(frame, (300, 280)) is None  # nothing to gain: the full decoder does it
    reduced = jpeg2000.decode(frame, (150, 140), bits_stored=12, signed=False)
    assert reduced.shape == (150, 140) and reduced.dtype == np.uint16
    with glymur_file(tmp_path, frame) as image:
        np.testing.assert_array_equal(image[:], pydicom.dcmread(path).pixel_array)


class glymur_file:  # noqa: N801 (a context manager)
    def __init__(self, folder, frame):
        self.path = folder / "frame.j2k"
        self.path.write_bytes(frame)

    def __enter__(self):
        return glymur.Jp2k(str(self.path))

    def __exit__(self, *exc):
        self.path.unlink()


def test_a_detector_size_cr_decodes_small_and_classifies_like_the_full_image(tmp_path, data_dirs, full_decode):
    """Real films re-encoded as 15-bit MONOCHROME1 JPEG 2000 CRs at detector size, lossy and lossless; one of odd
    size (the case that breaks Pillow's own reduce)."""
    from cxr_edge.runtime.evaluation.dataset import scan_dataset

    samples = scan_dataset(data_dirs).samples[::60]
    paths = []
    for i, sample in enumerate(samples):
        shape = (1955, 1841) if i % 2 else (1761, 1433)
        syntax, extra = (JPEG2000, {"j2k_cr": [15]}) if i % 3 else (JPEG2000Lossless, {})
        stored = _cr(load_image(sample.path), shape)
        from tests.factories import dicom_dataset

        ds = dicom_dataset(stored, photometric="MONOCHROME1", bits_stored=15, modality="CR",
                           WindowCenter=16000, WindowWidth=30000)
        ds.compress(syntax, stored, **extra)
        paths.append(tmp_path / f"cr{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    classifier = Classifier.open(None, backend="ort")
    reduced_images = [read_image(p, min_size=(224, 224)).pixels for p in paths]
    assert all(448 <= min(image.shape) < 1000 for image in reduced_images)  # windowed: twice the asked size, not 1955
    reduced = classifier.predict(paths)
    full_decode()
    full = classifier.predict(paths)
    full_images = [read_image(p, min_size=(224, 224)).pixels for p in paths]
    fp32 = Classifier.open(classifier.path.with_name("cxr-edge-fp32.onnx"), backend="ort").predict(paths)
    int8_change = max(abs(a.probabilities[c] - b.probabilities[c]) for a, b in zip(full, fp32, strict=True)
                      for c in a.probabilities)  # what INT8 itself moves, on the same films
    assert {read_image(p, min_size=(224, 224)).pixels.shape for p in paths[:2]} == {(1955, 1841), (1761, 1433)}
    assert all(a.error is None and b.error is None for a, b in zip(reduced, full, strict=True))
    for small, large in zip(reduced_images, full_images, strict=True):  # the contract's own tolerance
        seen = [cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA) for image in (small, large)]
        assert np.abs(seen[0] - seen[1]).mean() <= READ_TOLERANCE
    # A film on a decision boundary may change its label, as INT8 against FP32 changes up to 4 % of real films'
    # (benchmarks/decode/reduced.md); reading at reduced size must not do it more often than twice that.
    flips = sum(a.top != b.top for a, b in zip(reduced, full, strict=True))
    assert flips <= 0.1 * len(paths), (flips, int8_change)


def test_j2k_and_jp2_files_read_small_and_scale_by_their_precision(tmp_path):
    values = gradient(600, 520, top=4095)  # 12-bit values, stored by a DICOM encoder as a 12-bit codestream
    dicom = write_compressed_dicom(tmp_path / "j2k.dcm", values, JPEG2000Lossless, bits_stored=12)
    codestream = tmp_path / "film.j2k"
    codestream.write_bytes(next(pydicom.encaps.generate_frames(pydicom.dcmread(dicom).PixelData, number_of_frames=1)))
    wrapped = tmp_path / "film.jp2"  # the JP2 file format around a 16-bit codestream
    glymur.Jp2k(str(wrapped), data=(values.astype(np.uint32) * 16).astype(np.uint16), numres=4)
    for path in (codestream, wrapped):
        loaded = read_image(path)
        assert loaded.format == "jpeg2000" and loaded.pixels.shape == (600, 520)
        np.testing.assert_allclose(loaded.pixels, values / 4095.0, atol=1e-3)  # not 4095/65535: dark
        small = read_image(path, min_size=(224, 224))
        assert small.pixels.shape == (300, 260)
        difference = np.abs(cv2.resize(small.pixels, (130, 150), interpolation=cv2.INTER_AREA)
                            - cv2.resize(loaded.pixels, (130, 150), interpolation=cv2.INTER_AREA))
        assert difference.mean() < 0.005  # the wavelet low-pass and area resampling differ only at sharp edges


def test_a_codestream_that_contradicts_its_header_goes_to_the_full_decoder(tmp_path):
    stored = gradient(500, 500, top=4095)
    path = write_compressed_dicom(tmp_path / "j2k.dcm", stored, JPEG2000Lossless, bits_stored=12)
    frame = next(pydicom.encaps.generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
    assert jpeg2000.decode(frame, (224, 224), bits_stored=12, signed=False) is not None
    assert jpeg2000.decode(frame, (224, 224), bits_stored=10, signed=False) is None
    assert jpeg2000.decode(frame, (224, 224), bits_stored=12, signed=True) is None
    assert jpeg2000.decode(b"\xff\x4f\xff\x51 not really", (224, 224)) is None


def test_debug_says_why_an_image_was_decoded_in_full(tmp_path, model):
    import subprocess
    import sys

    stored = gradient(600, 600, top=4095)
    path = write_compressed_dicom(tmp_path / "j2k.dcm", stored, JPEG2000Lossless, bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 11, 10  # a header that contradicts its codestream's 12 bits
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "--debug", "predict", str(path), "--model",
                             str(model), "--format", "jsonl"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "JPEG 2000 at full size: the codestream's 12-bit unsigned values differ from the header's" in result.stderr
