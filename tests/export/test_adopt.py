"""`cxr-edge adopt`: classifiers made elsewhere (ONNX, TorchScript, timm name plus weights, module:function) into
cxr-edge model files, with parity against the source and contracts that contradict the network refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxr_edge.export.adopt import AdoptSpec, adopt, read_spec
from cxr_edge.export.to_onnx import PARITY_TOLERANCE
from cxr_edge.runtime.errors import CxrEdgeError
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.contract import Contract
from cxr_edge.runtime.model.gate import NO_GATE
from tests.factories import gradient

pytestmark = pytest.mark.slow  # exports real networks

CLASSES = ["normal", "pneumonia", "effusion"]
SIZE = 64


def tiny_network() -> nn.Module:
    """A small seeded grayscale classifier of three classes: the ``module:function`` source of these tests."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, len(CLASSES)))


def _contract(tmp_path: Path, **changes: object) -> Path:
    data = {"input_size": [SIZE, SIZE], "channels": 1, "value_range": [-1024, 1024], "class_names": CLASSES,
            "resampling": "area"} | changes
    path = tmp_path / "contract.json"
    path.write_text(json.dumps(data))
    return path


def _cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxr_edge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=os.environ | {"CXR_EDGE_CACHE": str(cwd / "cache")})


def _onnx_source(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_network().eval(), (torch.zeros(2, 1, SIZE, SIZE),), str(path), input_names=["x"],
                          output_names=["logits"], dynamo=False, opset_version=18,
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    return path


def _probabilities_on(model: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(["probabilities"],
                                                                                   {"image": batch})[0]


def test_value_range_becomes_the_contract_s_normalisation(tmp_path):
    spec = read_spec(_contract(tmp_path))
    assert spec.source_outputs == "logits" and spec.contract.num_classes == 3
    # [0, 1] to [-1024, 1024]: (x - 0.5) / (1 / 2048)
    assert spec.contract.mean == (0.5,) and spec.contract.std == pytest.approx((1 / 2048,))


def test_an_onnx_classifier_is_adopted_with_parity(tmp_path):
    report = adopt(str(_onnx_source(tmp_path / "source.onnx")), tmp_path / "adopted.onnx",
                   read_spec(_contract(tmp_path)))
    assert max(report.max_diff_ort, report.max_diff_openvino) <= PARITY_TOLERANCE
    classifier = Classifier.open(report.path, backend="ort")
    assert classifier.contract.class_names == tuple(CLASSES)


def test_a_torchscript_module_is_adopted_with_parity_through_the_cli(tmp_path):
    torch.jit.script(tiny_network()).save(str(tmp_path / "net.pt"))
    result = _cli("adopt", tmp_path / "net.pt", "-o", tmp_path / "adopted.onnx", "--contract", _contract(tmp_path),
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "parity with the source" in result.stdout and "no gate" in result.stdout
    assert Classifier.open(tmp_path / "adopted.onnx", backend="openvino").contract.num_classes == 3


def test_a_timm_name_with_weights_carries_those_weights(tmp_path):
    import timm

    torch.manual_seed(7)
    network = timm.create_model("resnet10t", pretrained=False, num_classes=3, in_chans=1).eval()
    torch.save(network.state_dict(), tmp_path / "weights.pt")
    report = adopt("resnet10t", tmp_path / "adopted.onnx", read_spec(_contract(tmp_path)),
                   weights=tmp_path / "weights.pt")
    assert max(report.max_diff_ort, report.max_diff_openvino) <= PARITY_TOLERANCE and not report.notes
    batch = np.random.default_rng(0).normal(size=(2, 1, SIZE, SIZE)).astype(np.float32)
    with torch.inference_mode():
        expected = torch.softmax(network(torch.from_numpy(batch)), dim=1).numpy()
    np.testing.assert_allclose(_probabilities_on(report.path, batch), expected, atol=PARITY_TOLERANCE)


def test_module_function_source_and_a_missing_weights_note(tmp_path):
    report = adopt("tests.export.test_adopt:tiny_network", tmp_path / "adopted.onnx", read_spec(_contract(tmp_path)))
    assert max(report.max_diff_ort, report.max_diff_openvino) <= PARITY_TOLERANCE
    assert report.notes and "no weights file" in report.notes[0]


@pytest.mark.parametrize(("changes", "reason"), [
    ({"class_names": ["normal", "covid19", "bacterial_pneumonia", "viral_pneumonia"]},
     r"outputs \(3,\) scores per image but the contract names 4 classes"),
    ({"channels": 3}, r"does not run on the contract's input \(3, 64, 64\)"),
])
def test_a_contract_that_contradicts_the_network_is_refused_in_one_line(tmp_path, changes, reason):
    source = _onnx_source(tmp_path / "source.onnx")
    result = _cli("adopt", source, "-o", tmp_path / "adopted.onnx", "--contract", _contract(tmp_path, **changes),
                  cwd=tmp_path)
    assert result.returncode == 1 and not (tmp_path / "adopted.onnx").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    import re

    assert re.search(reason, lines[0]), lines[0]


def test_a_contract_stating_its_normalisation_twice_is_refused(tmp_path):
    with pytest.raises(CxrEdgeError, match="either value_range or mean and std"):
        read_spec(_contract(tmp_path, mean=[0.5], std=[0.25]))


def test_probabilities_that_are_logits_are_refused_naming_the_fix(tmp_path):
    spec = AdoptSpec(Contract(input_size=(SIZE, SIZE), class_names=tuple(CLASSES), channels=1, mean=(0.5,),
                              std=(0.5,)), source_outputs="probabilities")
    with pytest.raises(CxrEdgeError, match='say "source_outputs": "logits"'):
        adopt(str(_onnx_source(tmp_path / "source.onnx")), tmp_path / "adopted.onnx", spec)
    assert not (tmp_path / "adopted.onnx").exists()


def test_an_adopted_model_runs_with_the_gate_off_and_every_record_says_so(tmp_path):
    import cv2

    model = adopt(str(_onnx_source(tmp_path / "source.onnx")), tmp_path / "adopted.onnx",
                  read_spec(_contract(tmp_path))).path
    for index in range(2):
        cv2.imwrite(str(tmp_path / f"film{index}.png"), gradient(96 + index * 8, 80))
    result = _cli("predict", tmp_path / "film0.png", tmp_path / "film1.png", "--model", model, "--format", "jsonl",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2
    assert all(r["gate"] is None and NO_GATE in r["warnings"] and r["status"] == "classified" for r in records)
    assert all(set(r["probabilities"]) == set(CLASSES) for r in records)


def test_labelled_films_fit_a_temperature_and_an_abstention_but_no_gate(tmp_path):
    import cv2

    from cxr_edge.runtime.model.gate import GatePolicy

    rng = np.random.default_rng(1)
    for index, name in enumerate(CLASSES):
        folder = tmp_path / "val" / name
        folder.mkdir(parents=True)
        for n in range(8):
            film = np.clip(gradient(96, 80) * (0.5 + 0.25 * index) + rng.normal(0, 12, (96, 80)), 0, 255)
            cv2.imwrite(str(folder / f"{n}.png"), film.astype(np.uint8))
    source = _onnx_source(tmp_path / "source.onnx")
    result = _cli("adopt", source, "-o", tmp_path / "adopted.onnx", "--contract", _contract(tmp_path),
                  "--val", tmp_path / "val", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fitted on" in result.stdout and "abstention below" in result.stdout
    classifier = Classifier.open(tmp_path / "adopted.onnx", backend="ort")
    policy = classifier.policy
    assert isinstance(policy, GatePolicy) and policy.gate_threshold is None and policy.validation_images == 24
    assert 0 < policy.abstain_below < 1 and policy.site_scale > 0
    (result,) = classifier.predict([next((tmp_path / "val" / "normal").iterdir())])
    assert NO_GATE in result.warnings


def test_a_multi_label_network_gets_operating_points_fitted_on_labelled_folders(tmp_path):
    """Sigmoid findings: parity, operating points from finding folders (one per finding, and no_finding), the
    per-finding figures printed, and records naming the positive findings."""
    import cv2

    rng = np.random.default_rng(2)
    for name in [*CLASSES, "no_finding"]:
        folder = tmp_path / "val" / name
        folder.mkdir(parents=True)
        for n in range(6):
            film = np.clip(gradient(96, 80) * rng.uniform(0.4, 1.2) + rng.normal(0, 12, (96, 80)), 0, 255)
            cv2.imwrite(str(folder / f"{n}.png"), film.astype(np.uint8))
    source = _onnx_source(tmp_path / "source.onnx")
    result = _cli("adopt", source, "-o", tmp_path / "multi.onnx", "--contract",
                  _contract(tmp_path, outputs="sigmoid"), "--val", tmp_path / "val", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "operating points (Youden) on 24 labelled films" in result.stdout
    assert all(f"{name}: positive at" in result.stdout and "AUROC" in result.stdout for name in CLASSES)
    classifier = Classifier.open(tmp_path / "multi.onnx", backend="openvino")
    points = classifier.contract.operating_points
    assert classifier.contract.multi_label and len(points) == 3 and all(0 < p < 1 for p in points)
    point_of = dict(zip(CLASSES, points, strict=True))
    for prediction in classifier.predict(sorted((tmp_path / "val" / "effusion").iterdir())):
        expected = {n for n, p in prediction.probabilities.items() if p >= point_of[n]}
        assert set(prediction.positive) == expected and NO_GATE in prediction.warnings
    bench = _cli("bench", "--model", tmp_path / "multi.onnx", "--data", tmp_path / "val", "--precisions", "fp32",
                 "--batch", "1", "--runs", "5", "--warmup", "1", "--markdown", tmp_path / "bench.md", cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr
    table = (tmp_path / "bench.md").read_text()
    assert "| finding | films with / without | AUROC |" in table
    assert all(f"| {name} | 6 / 18 |" in table for name in CLASSES)


def test_validate_points_a_multi_label_model_to_bench_in_one_line(tmp_path):
    from cxr_edge.runtime.evaluation.validate import validate_site
    from tests.factories import tiny_onnx

    model = tiny_onnx(tmp_path / "multi.onnx", size=64, classes=CLASSES, outputs="sigmoid")
    with pytest.raises(CxrEdgeError, match="bench --model MODEL --data FOLDERS"):
        validate_site(Classifier.open(model, backend="ort"), [tmp_path])
