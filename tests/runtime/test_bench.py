"""`cxr-edge bench` on tiny real models: the JSON's shape, its rows, interleaving, accuracy and refusals.

No timing thresholds: tests check correctness; the benchmark checks speed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import openvino as ov
import pytest

from cxr_edge.runtime.errors import CxrEdgeError
from cxr_edge.runtime.evaluation.bench import Reference, run_bench
from cxr_edge.runtime.evaluation.dataset import scan_dataset
from cxr_edge.runtime.evaluation.metrics import classification_report
from cxr_edge.runtime.model.classes import DEFAULT_CLASSES as CLASS_NAMES
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.timing import time_interleaved
from tests.factories import tiny_int8, tiny_onnx

ROW_KEYS = {"backend", "precision", "model", "size_mb", "load_s", "first_ms", "latency_ms", "throughput_ips",
            "peak_rss_mb", "speedup_vs_fp32", "budget_headroom"}


@pytest.fixture()
def models(tmp_path):
    fp32 = tiny_onnx(tmp_path / "fp32.onnx", size=64)
    int8 = tiny_int8(fp32, tmp_path / "int8.onnx")
    ir = tmp_path / "int8-ov.xml"
    ov.save_model(ov.Core().read_model(str(int8)), str(ir))
    return fp32, int8, ir


def test_json_shape_and_rows_without_torch(models):
    fp32, int8, ir = models
    result = run_bench([fp32, int8, ir], runs=6, warmup=1, batches=(1, 4))
    assert {"machine", "versions", "rows", "threads", "warnings"} <= set(result)
    assert {"cpu", "cores", "flags"} <= set(result["machine"]) and "onnxruntime" in result["versions"]
    pairs = [(r["backend"], r["precision"], r["model"]) for r in result["rows"]]
    assert pairs == [("ort", "fp32", str(fp32)), ("openvino", "fp32", str(fp32)), ("ort", "int8", str(int8)),
                     ("openvino", "int8", str(ir))]
    for row in result["rows"]:
        assert ROW_KEYS <= set(row)
        assert set(row["latency_ms"]) == {"p50", "p90", "p99", "min", "max"}
        assert set(row["throughput_ips"]) == {"1", "4"} and all(v > 0 for v in row["throughput_ips"].values())
        assert len(row["raw_latency_ms"]) == 6 and "under the 60 s budget" in row["budget_headroom"]
        assert "accuracy" not in row
    by_pair = {(r["backend"], r["precision"]): r for r in result["rows"]}
    assert by_pair[("ort", "fp32")]["speedup_vs_fp32"] == pytest.approx(1.0)
    expected = by_pair[("ort", "fp32")]["latency_ms"]["p50"] / by_pair[("ort", "int8")]["latency_ms"]["p50"]
    assert by_pair[("ort", "int8")]["speedup_vs_fp32"] == pytest.approx(expected)
    only_ort = run_bench([fp32, int8], backends=("ort",), precisions=("int8",), runs=5, warmup=0, batches=(1,))
    assert [(r["backend"], r["precision"]) for r in only_ort["rows"]] == [("ort", "int8")]


def test_rows_are_interleaved_in_blocks():
    calls = []
    samples = time_interleaved([lambda _: calls.append("a"), lambda _: calls.append("b")], None, runs=12, block=5)
    assert [len(s) for s in samples] == [12, 12]
    assert "".join(calls) == "aaaaabbbbbaaaaabbbbbaabb"


def test_accuracy_columns_with_a_labelled_folder(models, small_dataset):
    """Accuracy, macro-F1 and agreement equal what the classifier itself predicts for the same files."""
    fp32, int8, _ = models
    result = run_bench([fp32, int8], data_dir=small_dataset, runs=5, warmup=0, batches=(1,))
    samples = scan_dataset(small_dataset).samples
    truth = [s.label for s in samples]
    labels = {}
    for path in (fp32, int8):
        labels[path] = [p.label for p in Classifier.open(path, backend="ort").predict([s.path for s in samples])]
    for row in result["rows"]:
        predicted = labels[Path(row["model"])]
        expected = classification_report([CLASS_NAMES.index(t) for t in truth],
                                         [CLASS_NAMES.index(p) for p in predicted], CLASS_NAMES)
        assert row["images"] == 24
        assert row["accuracy"] == pytest.approx(expected["accuracy"])
        assert row["macro_f1"] == pytest.approx(expected["macro_f1"])
        agreement = np.mean([a == b for a, b in zip(predicted, labels[fp32], strict=True)])
        assert row["agreement_fp32"] == pytest.approx(agreement)
    assert [r["agreement_fp32"] for r in result["rows"] if r["precision"] == "fp32"] == [1.0, 1.0]


def test_accuracy_reads_folders_as_training_does_and_lists_unreadable_files(models, small_dataset, tmp_path):
    """Alias folder names and the ``train`` subfolder layout count; a broken file is reported, not dropped."""
    fp32, _, _ = models
    aliases = {"normal": "Normal", "covid19": "COVID-19", "bacterial_pneumonia": "pneumonia_bac",
               "viral_pneumonia": "Viral Pneumonia"}
    root = tmp_path / "labelled"
    for folder in small_dataset.iterdir():
        shutil.copytree(folder, root / "train" / aliases[folder.name])
    (root / "train" / "Normal" / "broken.png").write_text("not a picture")
    result = run_bench([fp32], backends=("ort",), data_dir=root, runs=5, warmup=0, batches=(1,))
    assert [row["images"] for row in result["rows"]] == [24]
    assert len(result["unreadable"]) == 1 and "broken.png" in result["unreadable"][0]
    assert any("1 labelled images could not be read" in w for w in result["warnings"])


def test_accuracy_refuses_a_folder_with_classes_the_model_lacks(tmp_path):
    model = tiny_onnx(tmp_path / "two.onnx", size=32, classes=("normal", "covid19"))
    folder = tmp_path / "labelled" / "viral_pneumonia"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), np.zeros((40, 40), np.uint8))
    with pytest.raises(CxrEdgeError, match="unknown class folders: viral_pneumonia"):
        run_bench([model], backends=("ort",), data_dir=tmp_path / "labelled", runs=2, warmup=0, batches=(1,))


def test_refuses_models_with_different_contracts(models, tmp_path):
    fp32, _, _ = models
    other = tiny_onnx(tmp_path / "other.onnx", size=32)
    with pytest.raises(CxrEdgeError, match="different preprocessing contract"):
        run_bench([fp32, other], runs=5, warmup=0, batches=(1,))


@pytest.mark.slow
def test_torch_reference_row_when_a_checkpoint_is_given(small_dataset, tmp_path):
    from cxr_edge.export.config import TrainConfig
    from cxr_edge.export.reference import torch_runner
    from cxr_edge.export.to_onnx import export_onnx
    from cxr_edge.export.train import train

    train(TrainConfig(arch="simple_cnn", epochs=1, image_size=32, batch_size=8, val_fraction=0.25), small_dataset,
          tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    model = export_onnx(checkpoint, tmp_path / "model.onnx").path
    reference = Reference("torch", "PyTorch eager", checkpoint,
                          lambda contract, threads: torch_runner(checkpoint, contract, threads))
    result = run_bench([model], reference=reference, runs=5, warmup=1, batches=(1,), data_dir=small_dataset)
    backends = [r["backend"] for r in result["rows"]]
    assert backends == ["ort", "openvino", "torch"]
    torch_row = result["rows"][-1]
    assert torch_row["speedup_vs_reference"] == pytest.approx(1.0)
    assert result["rows"][0]["speedup_vs_reference"] == pytest.approx(
        torch_row["latency_ms"]["p50"] / result["rows"][0]["latency_ms"]["p50"])
    assert torch_row["agreement_fp32"] == 1.0  # FP32 in PyTorch agrees with itself
    assert result["labels"]["torch"] == "PyTorch eager"
    without = run_bench([model], reference=reference, backends=("ort", "openvino"), runs=5, warmup=0, batches=(1,))
    assert "torch" not in [r["backend"] for r in without["rows"]]


def test_cli_writes_json_markdown_and_plot(models, tmp_path):
    fp32, int8, ir = models
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "bench", "--model", str(fp32), "--model",
                             str(int8), "--model", str(ir), "--runs", "5", "--warmup", "1", "--batch", "1,2",
                             "--json", str(out / "b.json"), "--markdown", str(out / "b.md"), "--plot",
                             str(out / "b.png")], capture_output=True, text=True, timeout=300,
                            env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", "CXR_EDGE_CACHE": str(tmp_path / "c")})
    assert result.returncode == 0, result.stderr
    assert "ORT" in result.stdout and "OpenVINO" in result.stdout and "x under 60 s" in result.stdout
    data = json.loads((out / "b.json").read_text())
    assert len(data["rows"]) == 4
    assert (out / "b.md").read_text().count("\n| ") >= 5
    assert (out / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "bench", "--model", str(fp32), "--backends", "tpu"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "choose from" in bad.stderr


def test_end_to_end_splits_real_files_into_stages(models, small_dataset):
    fp32, int8, _ = models
    files = sorted(small_dataset.rglob("*.jp*g"))[:4]
    result = run_bench([fp32, int8], backends=("ort",), runs=5, warmup=0, batches=(1,), end_to_end=files)
    assert [(e["backend"], e["precision"]) for e in result["end_to_end"]] == [("ort", "fp32"), ("ort", "int8")]
    for entry in result["end_to_end"]:
        assert entry["files"] == 4
        assert set(entry["stage_ms_p50"]) == {"decode", "preprocess", "inference", "postprocess"}
        assert entry["total_ms"] == pytest.approx(sum(entry["stage_ms_p50"].values()))
        assert sum(entry["share"].values()) == pytest.approx(1.0)
        assert entry["stage_ms_p50"]["decode"] > 0 and entry["stage_ms_p50"]["inference"] > 0


def test_cli_end_to_end_prints_where_the_time_goes(models, small_dataset, tmp_path):
    fp32, _, _ = models
    result = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "bench", "--model", str(fp32), "--backends", "ort",
                             "--runs", "5", "--warmup", "0", "--batch", "1", "--data", str(small_dataset),
                             "--end-to-end"], capture_output=True, text=True, timeout=300,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "CXR_EDGE_CACHE": str(tmp_path / "c")})
    assert result.returncode == 0, result.stderr
    assert "end to end, ONNX Runtime FP32" in result.stdout and "decode" in result.stdout
    assert "accuracy" in result.stdout


def test_a_row_that_cannot_run_is_a_row_with_its_reason(models, tmp_path):
    """A broken model and a reference that cannot run here become rows with reasons; the others are measured."""
    from rich.console import Console

    from cxr_edge.runtime.evaluation.bench_report import bench_markdown, bench_table

    fp32, _, _ = models
    broken = tmp_path / "broken.xml"
    broken.write_text("<?xml version='1.0'?>\n<net name='nothing'/>\n")
    broken.with_suffix(".bin").write_bytes(b"")

    def refuse(contract, threads):
        raise RuntimeError("torch is not installed here")

    result = run_bench([fp32, broken], reference=Reference("torch", "PyTorch eager", fp32, refuse), runs=5, warmup=0,
                       batches=(1,))
    rows = {(r["backend"], Path(r["model"]).name): r for r in result["rows"]}
    assert set(rows) == {("ort", "fp32.onnx"), ("openvino", "fp32.onnx"), ("-", "broken.xml"), ("torch", "fp32.onnx")}
    for engine in ("ort", "openvino"):
        assert "error" not in rows[engine, "fp32.onnx"] and len(rows[engine, "fp32.onnx"]["raw_latency_ms"]) == 5
    assert "OpenVINO cannot read it" in rows["-", "broken.xml"]["error"]
    assert rows["torch", "fp32.onnx"]["error"] == "torch is not installed here"
    assert sum("did not run" in w for w in result["warnings"]) == 2
    console = Console(record=True, width=120)
    bench_table(result, console)
    text = console.export_text()
    assert text.count("did not run") >= 4  # in both tables, and the reasons below them
    assert "torch is not installed here" in text
    assert "did not run: torch is not installed here" in bench_markdown(result)
