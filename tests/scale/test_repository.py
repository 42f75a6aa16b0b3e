"""Model repositories as Triton and OpenVINO Model Server read them: configs that their own schemas accept,
model files that load where they were placed and give the shipped model's answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from cxr_edge.runtime.errors import CxrEdgeError
from cxr_edge.runtime.model.backends import open_backend
from cxr_edge.runtime.model.model_file import MODELS_DIR, SHIPPED_INT8, SHIPPED_OPENVINO, file_sha256
from cxr_edge.runtime.scale.repository import (
    DESCRIPTION_FILE,
    OVMS_CONFIG_SCHEMA,
    REPOSITORY_FORMATS,
    export_repository,
)
from tests.numerics import int8_rerun_bound
from tests.processes import run_cli

SHIPPED = [MODELS_DIR / SHIPPED_INT8, MODELS_DIR / SHIPPED_OPENVINO]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("repo")
    export_repository(out, SHIPPED, fmt="both")
    return out


def _parsed(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_configs_parse_with_tritons_own_protobuf(repository: Path) -> None:
    onnx, ir = _parsed(repository / "cxr-edge" / "config.pbtxt"), _parsed(repository / "cxr-edge-openvino" /
                                                                               "config.pbtxt")
    assert (onnx.name, onnx.backend, ir.name, ir.backend) == ("cxr-edge", "onnxruntime", "cxr-edge-openvino",
                                                              "openvino")
    for config in (onnx, ir):
        assert config.max_batch_size == 16 and list(config.input[0].dims) == [1, 224, 224]
        assert config.input[0].data_type == model_config_pb2.TYPE_FP32
        outputs = {o.name: o for o in config.output}
        assert list(outputs["probabilities"].dims) == [4] and outputs["probabilities"].label_filename == "labels.txt"
        assert list(outputs["gate_score"].dims) == [1] and list(outputs["gate_score"].reshape.shape) == []
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert onnx.parameters["intra_op_thread_count"].string_value == "2"
    assert (repository / "cxr-edge" / "labels.txt").read_text().split() == [
        "normal", "covid19", "bacterial_pneumonia", "viral_pneumonia"]


def test_a_misspelt_field_is_what_the_parser_refuses(repository: Path) -> None:
    text = (repository / "cxr-edge" / "config.pbtxt").read_text().replace("max_batch_size", "max_batch_sise")
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text, model_config_pb2.ModelConfig())


def test_ovms_config_is_schema_valid_and_a_misspelt_key_is_not(repository: Path) -> None:
    import jsonschema

    config = json.loads((repository / "config.json").read_text())
    jsonschema.validate(config, OVMS_CONFIG_SCHEMA)
    assert [e["config"]["name"] for e in config["model_config_list"]] == ["cxr-edge", "cxr-edge-openvino"]
    for entry in config["model_config_list"]:  # base_path relative to config.json, as OVMS allows
        assert (repository / entry["config"]["base_path"] / "1").is_dir()
    config["model_config_list"][0]["config"]["nireqs"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, OVMS_CONFIG_SCHEMA)


def test_the_placed_files_load_and_answer_as_the_originals_at_any_batch(repository: Path) -> None:
    batch = np.random.default_rng(0).normal(size=(3, 1, 224, 224)).astype(np.float32)
    pairs = [(repository / "cxr-edge" / "1" / "model.onnx", SHIPPED[0], "ort"),
             (repository / "cxr-edge-openvino" / "1" / "model.xml", SHIPPED[1], "openvino")]
    for placed, original, engine in pairs:
        served = open_backend(placed, engine).run(batch)["probabilities"]
        reference = np.concatenate([open_backend(original, engine).run(batch[i:i + 1])["probabilities"]
                                    for i in range(3)])
        # batch 3 against batch 1: INT8 is not bit-equal under every CPU's kernels (tests/numerics.py)
        np.testing.assert_allclose(served, reference, atol=int8_rerun_bound(SHIPPED[0]))
        description = json.loads((placed.parent / DESCRIPTION_FILE).read_text())
        assert description["sha256"] == file_sha256(original) and description["precision"] == "int8"
        assert description["contract"]["class_names"] == ["normal", "covid19", "bacterial_pneumonia",
                                                          "viral_pneumonia"]
        assert description["gate"]["gate_threshold"] > 0


def test_a_new_version_keeps_the_old_and_an_existing_one_is_refused(tmp_path: Path) -> None:
    export_repository(tmp_path, SHIPPED[:1], fmt="triton")
    with pytest.raises(CxrEdgeError, match="give --version 2"):
        export_repository(tmp_path, SHIPPED[:1], fmt="triton")
    export_repository(tmp_path, SHIPPED[:1], fmt="both", version=2)
    assert sorted(p.name for p in (tmp_path / "cxr-edge").iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]
    assert len(json.loads((tmp_path / "config.json").read_text())["model_config_list"]) == 1


def test_cli_and_its_choices(tmp_path: Path) -> None:
    from cxr_edge.cli.scale import REPOSITORY_FORMATS as CLI_FORMATS

    assert CLI_FORMATS == REPOSITORY_FORMATS
    result = run_cli("export-repository", tmp_path / "repo", "--format", "ovms", "--name", "chest")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "repo" / "chest" / "1" / "model.onnx").exists()
    assert (tmp_path / "repo" / "chest-openvino" / "1" / "model.xml").exists()
    assert not (tmp_path / "repo" / "chest" / "config.pbtxt").exists()
    again = run_cli("export-repository", tmp_path / "repo", "--format", "ovms", "--name", "chest")
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
