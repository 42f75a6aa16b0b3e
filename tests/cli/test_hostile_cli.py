"""The whole bad-input corpus through `cxr-edge predict` in one call, as a careless user or an attacker runs it:
no traceback, no internal error, one line per refusal naming the file, every good file predicted, strict JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cxr_edge.runtime.errors import printable
from cxr_edge.runtime.model.contract import Contract
from tests.factories import CLASSES, tiny_onnx
from tests.hostile import GOOD, image_cases, layout_cases
from tests.processes import run_cli


def _strict_json(line: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_every_bad_input_is_one_clean_line_and_every_good_one_is_predicted(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx", size=64)
    images = image_cases(tmp_path / "img")
    layout = layout_cases(tmp_path / "fs")
    inputs = [tmp_path / "img", *(case.path for case in layout), tmp_path / "fs" / GOOD]
    result = run_cli("predict", "--model", model, "--format", "jsonl", "--backend", "ort", *inputs,
                     env={"CXR_EDGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "\x1b" not in result.stderr + result.stdout and "SECRET" not in result.stderr + result.stdout
    records = {record["path"]: record for record in map(_strict_json, result.stdout.splitlines())}
    errors = [line for line in result.stderr.splitlines() if line.startswith("cxr-edge: error: ")]
    assert all(line.startswith("cxr-edge: ") for line in result.stderr.splitlines()), result.stderr
    for case in [*images, *layout]:
        record = records[str(case.path)]
        if case.refused is None:
            assert record["error"] is None and record["label"] in CLASSES, (case.name, record)
            if case.warned:
                assert any(case.warned in warning for warning in record["warnings"]), (case.name, record)
        else:
            assert record["label"] is None and case.refused in record["error"], (case.name, record)
            assert f"cxr-edge: error: {printable(case.path)}: {record['error']}" in errors, case.name
    assert records[str(tmp_path / "img" / GOOD)]["label"] in CLASSES
    assert records[str(tmp_path / "fs" / GOOD)]["label"] in CLASSES
    assert len(errors) == sum(record["error"] is not None for record in records.values())


def _without_softmax(path: Path) -> Path:
    """The tiny model ending in its raw logits (the last layer a research model often leaves out)."""
    graph = onnx.load(path)
    softmax = next(n for n in graph.graph.node if n.op_type == "Softmax")
    softmax.op_type = "Identity"
    del softmax.attribute[:]
    onnx.save(graph, path)
    return path


def _nan_bias(path: Path) -> Path:
    graph = onnx.load(path)
    for index, tensor in enumerate(graph.graph.initializer):
        if tensor.name == "B":
            graph.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.full(len(CLASSES), np.nan,
                                                                                    np.float32), "B"))
    onnx.save(graph, path)
    return path


@pytest.mark.parametrize("damage", [_nan_bias, _without_softmax], ids=["nan", "logits"])
def test_a_model_that_outputs_no_probabilities_is_refused_once_naming_the_file(tmp_path, damage):
    path = damage(tiny_onnx(tmp_path / "damaged.onnx", size=64))
    image_cases(tmp_path / "img")
    result = run_cli("predict", "--model", path, "--format", "jsonl", "--backend", "ort", tmp_path / "img" / GOOD,
                     tmp_path / "img" / GOOD, env={"CXR_EDGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"cxr-edge: error: {path}: the model's output on a blank image is not a set of "
                           "probabilities"), line


def test_a_contract_with_a_nan_mean_is_refused(tmp_path):
    from cxr_edge.runtime.model.model_file import CONTRACT_KEY

    contract = Contract(input_size=(64, 64), class_names=CLASSES, channels=1, mean=(0.5,), std=(0.25,))
    metadata = contract.to_metadata()
    metadata[CONTRACT_KEY] = metadata[CONTRACT_KEY].replace('"mean": [0.5]', '"mean": [NaN]')
    model = tiny_onnx(tmp_path / "nan-mean.onnx", size=64, contract=False, extra_metadata=metadata)
    result = run_cli("predict", "--model", model, "--backend", "ort", tmp_path, env={"CXR_EDGE_CACHE": str(tmp_path)})
    assert result.returncode == 1
    assert "mean values must be finite numbers" in result.stderr and str(model) in result.stderr


@pytest.mark.parametrize("names", [CLASSES[:3], (*CLASSES, "tuberculosis")])
def test_a_contract_naming_the_wrong_number_of_classes_is_refused_at_open(tmp_path, names):
    contract = Contract(input_size=(64, 64), class_names=tuple(names), channels=1, mean=(0.5,), std=(0.25,))
    model = tiny_onnx(tmp_path / "wrong.onnx", size=64, contract=False, extra_metadata=contract.to_metadata())
    image_cases(tmp_path / "img")
    result = run_cli("predict", "--model", model, "--backend", "ort", tmp_path / "img" / GOOD,
                     env={"CXR_EDGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"cxr-edge: error: {model}: the model outputs 4 class probabilities but its contract names {len(names)} "
        f"classes ({', '.join(names)})"]


def test_the_openvino_engine_checks_the_contract_too(tmp_path):
    from cxr_edge.runtime.errors import ModelError
    from cxr_edge.runtime.model.classifier import Classifier

    contract = Contract(input_size=(64, 64), class_names=CLASSES[:3], channels=1, mean=(0.5,), std=(0.25,))
    model = tiny_onnx(tmp_path / "wrong.onnx", size=64, contract=False, extra_metadata=contract.to_metadata())
    with pytest.raises(ModelError, match="outputs 4 class probabilities"):
        Classifier.open(Path(model), backend="openvino")
