"""Every transfer syntax through the decoder table: the same stored values as pydicom's reference decode, reduced
reads within the contract's tolerance, and a missing decoder falling back with a --debug line."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.contract import READ_TOLERANCE
from cxr_edge.runtime.model.preprocess import load_for_contract, resize
from cxr_edge.runtime.reading import codecs, jpeg2000
from cxr_edge.runtime.reading.dicom_image import dicom_grayscale
from cxr_edge.runtime.reading.images import load_image, read_image
from cxr_edge.runtime.reading.shrink import FULL_DECODE_ENV, MIN_SIDE, factor, shrink
from tests.factories import dicom_in_syntax, every_syntax, jph_file, write_dicom

LOSSY_JPEG_STEPS = 2
"""Lossy JPEG leaves the inverse DCT's rounding to the decoder: libjpeg-turbo and libjpeg 9 differ by up to 2 of
4095 on 12-bit data (measured), within the accuracy ISO/IEC 10918-2 allows."""


@pytest.fixture(scope="module")
def film_files(data_dirs, tmp_path_factory):
    """A real film as a 15-bit CR of 1100 x 960 in every transfer syntax the runtime reads."""
    from cxr_edge.runtime.evaluation.dataset import scan_dataset

    film = load_image(scan_dataset(data_dirs).samples[7].path)
    stored = np.rint(cv2.resize(film, (960, 1100), interpolation=cv2.INTER_AREA) * 32767).astype(np.uint16)
    return every_syntax(stored, tmp_path_factory.mktemp("syntaxes"), bits_stored=15, modality="CR",
                        WindowCenter=16000, WindowWidth=30000)


def _frame(path, min_size=None) -> codecs.Frame:
    ds = pydicom.dcmread(path)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    data = ds.PixelData if syntax in codecs.NATIVE else next(generate_frames(ds.PixelData, number_of_frames=1))
    return codecs.Frame(ds, syntax, data, ds.Rows, ds.Columns, ds.BitsStored, min_size)


def test_every_syntax_the_node_accepts_has_a_file_here(film_files):
    assert set(codecs.TRANSFER_SYNTAXES) - {JPEGBaseline8Bit, "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
                                            "1.2.840.10008.1.2.2"} <= set(film_files)


def test_every_syntax_decodes_to_pydicoms_stored_values_with_the_fastest_decoder(film_files):
    for syntax, path in film_files.items():
        frame = _frame(path)
        stored, decoder = codecs.decode_stored(frame, syntax)
        reference = pydicom.dcmread(path).pixel_array
        first_full = next((name for name in codecs.ORDER.get(syntax, ()) if not codecs.DECODERS[name].reduces),
                          codecs.PYDICOM.name)
        assert decoder == first_full, (path.name, decoder)
        assert stored.shape == reference.shape and stored.dtype == reference.dtype, path.name
        steps = LOSSY_JPEG_STEPS if syntax == JPEGExtended12Bit else 0
        assert np.abs(stored.astype(np.int32) - reference).max() <= steps, (path.name, decoder)


def test_jpeg_baseline_decodes_within_the_idct_rounding_of_pydicom(tmp_path):
    film = np.rint(cv2.GaussianBlur(np.random.default_rng(3).random((400, 360)), (0, 0), 6) * 255).astype(np.uint8)
    path = tmp_path / "baseline.dcm"
    dicom_in_syntax(film, JPEGBaseline8Bit).save_as(path, enforce_file_format=True)
    stored, decoder = codecs.decode_stored(_frame(path), JPEGBaseline8Bit)
    assert decoder == "simplejpeg (libjpeg-turbo)"
    assert np.abs(stored.astype(np.int32) - pydicom.dcmread(path).pixel_array).max() <= LOSSY_JPEG_STEPS


def test_jpeg_2000_and_htj2k_read_at_reduced_resolution_near_the_full_image(film_files, monkeypatch):
    for syntax in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201"):
        stored, decoder = codecs.decode_stored(_frame(film_files[syntax], (224, 224)), syntax)
        assert decoder == "glymur (OpenJPEG), reduced" and stored.shape == (275, 240), (syntax, decoder)
    reduced = [read_image(film_files[s], min_size=(224, 224)).pixels for s in sorted(film_files)]
    monkeypatch.setenv(FULL_DECODE_ENV, "1")
    jpeg2000.available.cache_clear()
    full = [read_image(film_files[s], min_size=(224, 224)).pixels for s in sorted(film_files)]
    jpeg2000.available.cache_clear()
    windowed = ["WindowCenter" in pydicom.dcmread(film_files[s], stop_before_pixels=True) for s in sorted(film_files)]
    assert any(windowed) and not all(windowed)
    for small, large, window in zip(reduced, full, windowed, strict=True):
        assert small.shape == ((550, 480) if window else (275, 240)) and large.shape == (1100, 960)  # window: x2
        difference = np.abs(cv2.resize(small, (224, 224), interpolation=cv2.INTER_AREA)
                            - cv2.resize(large, (224, 224), interpolation=cv2.INTER_AREA))
        assert difference.mean() <= READ_TOLERANCE  # wavelet low-pass or block mean against one area resampling


def test_htj2k_files_read_at_reduced_resolution(tmp_path):
    stored = np.rint(cv2.GaussianBlur(np.random.default_rng(5).random((900, 800)), (0, 0), 9) * 65535)
    stored = cv2.normalize(stored, None, 0, 65535, cv2.NORM_MINMAX).astype(np.uint16)
    from tests.factories import htj2k_codestream

    jph = jph_file(tmp_path / "film.jph", stored)
    jhc = tmp_path / "film.jhc"
    jhc.write_bytes(htj2k_codestream(stored))
    for path in (jph, jhc):
        small = read_image(path, min_size=(224, 224))
        assert small.format == "jpeg2000" and small.pixels.shape == (450, 400)
        full = read_image(path).pixels
        np.testing.assert_allclose(full, stored / 65535, atol=1e-6)
        shrunk = cv2.resize(full, (400, 450), interpolation=cv2.INTER_AREA)
        assert np.abs(small.pixels - shrunk).mean() <= READ_TOLERANCE


def test_reduction_comes_before_the_value_mapping_and_equals_it_where_the_mapping_is_linear(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    stored = np.rint(cv2.GaussianBlur(rng.random((700, 600)), (0, 0), 5) * 4095).astype(np.uint16)
    plain = write_dicom(tmp_path / "plain.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-100)
    windowed = write_dicom(tmp_path / "window.dcm", stored, bits_stored=12, WindowCenter=2000, WindowWidth=1200)
    ds = pydicom.dcmread(windowed)
    small = read_image(windowed, min_size=(150, 150)).pixels  # a window: reduced to twice the size asked for
    assert factor(700, 600, (300, 300)) == 2 and small.shape == (350, 300)
    np.testing.assert_allclose(small, dicom_grayscale(shrink(stored, (300, 300)), ds), atol=1e-6)
    linear = read_image(plain, min_size=(150, 150)).pixels
    monkeypatch.setenv(FULL_DECODE_ENV, "1")
    full = read_image(plain, min_size=(150, 150)).pixels
    monkeypatch.delenv(FULL_DECODE_ENV)
    np.testing.assert_allclose(linear, shrink(full, (150, 150)), atol=1e-5)  # float rounding of the rescale


def test_shrink_averages_blocks_on_the_exact_grid_and_never_goes_below_the_smallest_side():
    values = np.arange(66 * 65, dtype=np.uint16).reshape(66, 65)
    expected = values.astype(np.float64)
    expected = np.pad(expected, ((0, 0), (0, 1)), mode="edge")  # a partial last block repeats the edge
    expected = expected.reshape(33, 2, 33, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(shrink(values, (32, 32)), expected, rtol=1e-6)
    assert factor(2000, 2000, (224, 224)) == 8 and factor(448, 2000, (224, 224)) == 2
    wide = np.arange(256 * 261, dtype=np.float32).reshape(256, 261)
    assert shrink(wide, (32, 32)).shape == (32, 33)  # 261 = 32 x 8 + 5: the larger half block is kept
    assert shrink(wide[:, :259], (32, 32)).shape == (32, 32)  # 259 = 32 x 8 + 3: the smaller one is left out
    np.testing.assert_allclose(shrink(wide[:, :259], (32, 32)), shrink(wide[:, :256], (32, 32)), rtol=1e-6)
    assert factor(100, 100, (8, 8)) == 2 and 100 // factor(100, 100, (8, 8)) >= MIN_SIDE


def test_png_16_bit_reads_reduced_with_its_depth_judged_on_every_pixel(tmp_path, monkeypatch):
    stored = np.rint(cv2.GaussianBlur(np.random.default_rng(4).random((800, 640)), (0, 0), 7) * 4095)
    stored = cv2.normalize(stored, None, 0, 4095, cv2.NORM_MINMAX).astype(np.uint16)
    stored[0, 0] = 4095  # a single pixel sets the 12-bit depth; the average of its block would hide it
    path = tmp_path / "depth.png"
    cv2.imwrite(str(path), stored)
    small = read_image(path, min_size=(100, 80))
    assert small.pixels.shape == (100, 80) and any("12-bit" in warning for warning in small.warnings)
    np.testing.assert_allclose(small.pixels, shrink(stored, (100, 80)) / 4095, atol=1e-6)


def detector_size(film: np.ndarray, long_side: int = 2048) -> np.ndarray:
    """A shared film (downsampled for distribution) back at the size a CR or DX detector writes."""
    scale = long_side / max(film.shape)
    return cv2.resize(film, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)


def test_reduced_reads_of_real_films_stay_within_the_contracts_tolerance(data_dirs, tmp_path, monkeypatch):
    """Real films of several sources at a detector's size as windowed 15-bit DICOM and 16-bit PNG: the network's
    image from the reduced read against the full-size read, as `READ_TOLERANCE` defines it."""
    from cxr_edge.runtime.evaluation.dataset import scan_dataset

    contract = Classifier.open(None, backend="ort", threads=1).contract
    paths = []
    for index, sample in enumerate(scan_dataset(data_dirs).samples[::45]):
        stored = np.rint(np.clip(detector_size(load_image(sample.path)), 0, 1) * 32767).astype(np.uint16)
        paths.append(write_dicom(tmp_path / f"{index}.dcm", stored, bits_stored=15, modality="CR",
                                 WindowCenter=int(np.percentile(stored, 60)), WindowWidth=20000))
        paths.append(tmp_path / f"{index}.png")
        cv2.imwrite(str(paths[-1]), stored * 2)

    def seen() -> np.ndarray:
        return np.stack([resize(load_for_contract(path, contract).pixels, contract) for path in paths])

    reduced = seen()
    monkeypatch.setenv(FULL_DECODE_ENV, "1")
    difference = np.abs(reduced - seen()).mean(axis=(1, 2))
    assert len(paths) >= 24 and np.count_nonzero(difference) >= len(paths) // 2  # most films were reduced
    assert difference.max() <= READ_TOLERANCE, (paths[int(difference.argmax())].name, np.round(difference, 4))


def test_a_missing_decoder_falls_back_to_the_next_with_a_debug_line(film_files, model):
    path = film_files["1.2.840.10008.1.2.4.80"]
    script = ("import sys; sys.modules['imagecodecs'] = None; sys.argv = ['cxr-edge', '--debug', 'predict', "
              f"{str(path)!r}, '--model', {str(model)!r}, '--format', 'jsonl']; "
              "from cxr_edge.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "imagecodecs jpegls (CharLS) is not installed: trying the next decoder" in result.stderr
    assert "pyjpegls (CharLS) decoded" in result.stderr or "pydicom (its own choice of plugin) decoded" in result.stderr
    assert '"error": null' in result.stdout or '"error"' not in result.stdout
