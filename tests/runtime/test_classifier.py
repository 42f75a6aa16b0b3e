"""Classifier on real ONNX Runtime and OpenVINO sessions, with small models built by the tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cv2
import numpy as np
import openvino as ov
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from cxr_edge.runtime.errors import ContractError, ModelError
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.preprocess import preprocess
from cxr_edge.runtime.model.stream import predict_stream
from cxr_edge.runtime.reading.images import load_image
from cxr_edge.runtime.reading.paths import InputError, expand_inputs
from cxr_edge.runtime.reading.shrink import FULL_DECODE_ENV
from tests.factories import CLASSES, gradient, tiny_onnx, write_compressed_dicom, write_dicom, write_jpeg_dicom


def _images(tmp_path, count=5):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        image = np.clip(gradient(120 + 10 * i, 100) + rng.normal(0, 20, (120 + 10 * i, 100)), 0, 255)
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), image.astype(np.uint8))
        paths.append(path)
    return paths


def test_both_backends_agree_on_a_float_model(tmp_path, model):
    images = _images(tmp_path)
    ort_run = Classifier.open(model, backend="ort").predict(images, cam=True)
    ov_run = Classifier.open(model, backend="openvino").predict(images, cam=True)
    for a, b in zip(ort_run, ov_run, strict=True):
        assert a.label == b.label
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in CLASSES) <= 1e-4
        np.testing.assert_allclose(a.cam, b.cam, atol=1e-4)


def test_probabilities_match_the_contract_preprocessing(tmp_path, model):
    import onnxruntime as ort

    path = _images(tmp_path, 1)[0]
    classifier = Classifier.open(model, backend="ort")
    expected = ort.InferenceSession(str(model)).run(
        ["probabilities"], {"image": preprocess(load_image(path), classifier.contract)[None]})[0][0]
    result = classifier.predict([path])[0]
    np.testing.assert_allclose([result.probabilities[c] for c in CLASSES], expected, rtol=1e-6)
    assert set(result.latency_ms) == {"decode", "preprocess", "inference", "total"}


def test_openvino_ir_runs_on_openvino_with_its_contract(tmp_path, model):
    ir = tmp_path / "tiny.xml"
    ov.save_model(ov.Core().read_model(str(model)), str(ir))
    classifier = Classifier.open(ir)
    assert classifier.backend.name == "openvino" and classifier.backend_reason == "OpenVINO IR"
    assert classifier.contract.class_names == CLASSES
    with pytest.raises(ModelError, match="openvino models run only on openvino"):
        Classifier.open(ir, backend="ort")


def test_auto_measures_once_and_remembers(tmp_path, model):
    first = Classifier.open(model)
    assert first.backend.name in ("ort", "openvino") and "measured faster here" in first.backend_reason
    again = Classifier.open(model)
    assert again.backend.name == first.backend.name and "remembered" in again.backend_reason


def test_ort_graph_cache_is_used_on_the_second_start(tmp_path, model):
    images = _images(tmp_path, 2)
    cold = Classifier.open(model, backend="ort")
    warm = Classifier.open(model, backend="ort")
    assert cold.backend.settings["graph_cache_hit"] is False and warm.backend.settings["graph_cache_hit"] is True
    for a, b in zip(cold.predict(images), warm.predict(images), strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_damaged_graph_cache_is_rebuilt(tmp_path, model):
    cold = Classifier.open(model, backend="ort")
    cache_file = cold.backend.settings["graph_cache"]
    with open(cache_file, "wb") as handle:
        handle.write(b"garbage")
    assert Classifier.open(model, backend="ort").predict(_images(tmp_path, 1))[0].error is None


def test_models_without_or_against_their_contract_are_refused(tmp_path):
    with pytest.raises(ContractError, match="carries no cxr-edge preprocessing contract"):
        Classifier.open(tiny_onnx(tmp_path / "bare.onnx", contract=False), backend="ort")
    from cxr_edge.runtime.model.contract import Contract

    wrong = Contract(input_size=(96, 96), class_names=CLASSES, channels=1, mean=(0.5,), std=(0.25,)).to_metadata()
    lying = tiny_onnx(tmp_path / "lying.onnx", size=64, contract=False, extra_metadata=wrong)
    with pytest.raises(ModelError, match=r"input is \(1, 64, 64\) but its contract says \(1, 96, 96\)"):
        Classifier.open(lying, backend="ort")
    text = tmp_path / "model.onnx"
    text.write_text("this is not a model")
    with pytest.raises(ModelError, match="not an ONNX model"):
        Classifier.open(text)
    with pytest.raises(ModelError, match="no such model file"):
        Classifier.open(tmp_path / "absent.onnx")


def test_monochrome1_predicts_like_the_same_pixels_in_monochrome2(tmp_path, model):
    stored = gradient(200, 160, top=4095)
    mono2 = write_dicom(tmp_path / "m2.dcm", stored, bits_stored=12)
    mono1 = write_dicom(tmp_path / "m1.dcm", (4095 - stored).astype(np.uint16), bits_stored=12,
                        photometric="MONOCHROME1")
    a, b = Classifier.open(model, backend="ort").predict([mono2, mono1])
    assert a.label == b.label
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_12bit_dicom_with_window_predicts_the_windowed_image(tmp_path, model, monkeypatch):
    stored = gradient(200, 160, top=4095)
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, WindowCenter=1800, WindowWidth=1600)
    monkeypatch.setenv(FULL_DECODE_ENV, "1")  # the window on every pixel (reduced reads: tests/runtime/test_codecs)
    classifier = Classifier.open(model, backend="ort")
    windowed = np.clip((stored - (1800 - 0.5)) / (1600 - 1) + 0.5, 0, 1).astype(np.float32)
    from_file, from_array = classifier.predict([path, windowed])
    assert from_file.probabilities == pytest.approx(from_array.probabilities, abs=1e-5)


def test_compressed_dicoms_are_classified(tmp_path, model):
    stored = gradient(200, 160, top=4095)
    j2k = write_compressed_dicom(tmp_path / "j2k.dcm", stored, JPEG2000Lossless, bits_stored=12)
    jpeg = write_jpeg_dicom(tmp_path / "jpeg.dcm", gradient(200, 160))
    plain = write_dicom(tmp_path / "plain.dcm", stored, bits_stored=12)
    rle = write_compressed_dicom(tmp_path / "rle.dcm", stored, RLELossless, bits_stored=12)
    results = Classifier.open(model, backend="ort").predict([j2k, jpeg, plain, rle])
    assert all(r.error is None for r in results)
    assert results[3].probabilities == pytest.approx(results[2].probabilities, abs=1e-6)  # lossless, full size
    # JPEG 2000 is decoded at half size here (the tiny model reads 64 px): the wavelet's low-pass, not the pixels
    assert results[0].probabilities == pytest.approx(results[2].probabilities, abs=0.02)


def test_stream_keeps_input_order_and_passes_errors_through(tmp_path, model):
    images = _images(tmp_path, 12)
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    items = images[:5] + [bad] + images[5:] + [InputError("ghost.png", "no such file or folder")]
    classifier = Classifier.open(model, backend="ort", mode="throughput")
    streamed = list(predict_stream(classifier, items, batch_size=4, workers=2))
    assert [p.path for p in streamed] == [str(i) if not isinstance(i, InputError) else i.path for i in items]
    assert [p.error is None for p in streamed] == [True] * 5 + [False] + [True] * 7 + [False]
    sequential = classifier.predict(images)
    good = [p for p in streamed if p.error is None]
    for a, b in zip(good, sequential, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_openvino_throughput_mode_splits_batches_across_streams(tmp_path, model):
    images = _images(tmp_path, 6)
    latency = Classifier.open(model, backend="openvino").predict(images)
    throughput = Classifier.open(model, backend="openvino", mode="throughput")
    assert throughput.backend.settings["hint"] == "THROUGHPUT"
    batched = list(predict_stream(throughput, images, batch_size=6))
    for a, b in zip(latency, batched, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)


def test_expand_inputs_folders_globs_and_missing(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "empty").mkdir()
    for name in ("a/1.png", "a/2.dcm", "a/IM0001", "a/notes.txt", "a/.hidden.png", "a/sub/3.jpg"):
        (tmp_path / name).write_bytes(b"x")
    names = lambda items: [i.name if not isinstance(i, InputError) else i.reason for i in items]  # noqa: E731
    assert names(expand_inputs([str(tmp_path / "a")])) == ["1.png", "2.dcm", "IM0001"]
    assert names(expand_inputs([str(tmp_path / "a")], recursive=True)) == ["1.png", "2.dcm", "IM0001", "3.jpg"]
    assert names(expand_inputs([str(tmp_path / "a" / "*.png")])) == ["1.png"]
    assert names(expand_inputs([str(tmp_path / "empty"), str(tmp_path / "x*.png"), str(tmp_path / "gone.png")])) == [
        "folder holds no image files", "no files match this pattern", "no such file or folder"]


def test_ort_path_never_imports_openvino(tmp_path, model):
    image = _images(tmp_path, 1)[0]
    code = textwrap.dedent(f"""
        import sys
        from cxr_edge.runtime.model.classifier import Classifier
        result = Classifier.open({str(model)!r}, backend="ort").predict([{str(image)!r}])[0]
        assert result.error is None, result.error
        assert "openvino" not in sys.modules
        assert not any(m.split(".")[0] in ("torch", "timm", "nncf") for m in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_warm_runs_one_throw_away_inference_only_after_idle(tmp_path, model):
    classifier = Classifier.open(model, backend="ort")
    calls = []
    run = classifier.backend.run
    classifier.backend.run = lambda batch, names: calls.append(batch.shape) or run(batch, names)
    classifier._last_run -= 10  # as if idle for ten seconds
    thread = classifier.warm(idle_s=0.5)
    assert thread is not None
    thread.join(timeout=10)
    assert calls == [(1, 1, 64, 64)]
    assert classifier.warm(idle_s=0.5) is None  # it just ran: nothing more
    classifier.predict(_images(tmp_path, 1))
    assert classifier.warm(idle_s=0.5) is None and len(calls) == 2
