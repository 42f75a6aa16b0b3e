"""Tiny but real training runs (seconds): artefacts, determinism, and the CLI around them."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest
import torch

from cxr_edge.export.config import TrainConfig
from cxr_edge.export.data import manifest_hash, stratified_split
from cxr_edge.export.train import CHECKPOINT_NAME, load_checkpoint, train
from cxr_edge.export.zoo import build_model
from cxr_edge.runtime.errors import CxrEdgeError
from cxr_edge.runtime.evaluation.dataset import scan_dataset
from cxr_edge.runtime.model.contract import Contract

pytestmark = pytest.mark.slow  # trains or exports real networks

TINY = dict(epochs=2, batch_size=8, image_size=64, val_fraction=0.25, threads=2)


def test_tiny_efficientnet_run_writes_every_artefact(small_dataset, tmp_path):
    out = tmp_path / "run"
    result = train(TrainConfig(**TINY), small_dataset, out, console=None)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [CHECKPOINT_NAME, "history.json", "metrics.json", "curves.png", "confusion_matrix.png"])

    checkpoint = load_checkpoint(out / CHECKPOINT_NAME)
    assert checkpoint["contract"] == Contract(input_size=(64, 64), class_names=(
        "normal", "covid19", "bacterial_pneumonia", "viral_pneumonia"), channels=1, mean=(0.5,), std=(0.5,),
        intensity="equalize")
    assert checkpoint["arch"] == "efficientnet_lite0"
    provenance = checkpoint["provenance"]
    dataset = scan_dataset(small_dataset)
    assert provenance["data_manifest_hash"] == manifest_hash(dataset.samples)
    assert provenance["seed"] == 0 and provenance["weights_source"] == "ImageNet (packaged)"
    train_part, val_part = stratified_split(dataset.samples, 0.25, 0)
    assert provenance["train_files"] == len(train_part) and provenance["val_files"] == len(val_part)
    assert provenance["train_patients"] == len({s.group for s in train_part})
    model, _ = build_model("efficientnet_lite0", 4, pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])

    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_macro_f1", "lr"} <= set(history[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["validation"]["per_class"]) == set(checkpoint["contract"].class_names)
    assert sum(r["support"] for r in metrics["validation"]["per_class"].values()) == len(val_part)
    assert {f["file"] for f in metrics["val_files"]} == {s.key for s in val_part}
    assert set(metrics["groups"]["cell"]) == {f"{s.label}/{s.source}/{s.age}" for s in val_part}
    for kind in ("cell", "age", "source"):
        for row in metrics["groups"][kind].values():
            low, high = row["ci95"]
            assert 0 <= low <= row["accuracy"] <= high <= 1
    reliability = checkpoint["reliability"]
    assert reliability["policy"]["fitted_on"] == "validation images"
    assert reliability["policy"]["gate_threshold"] > 0 and 0.1 <= reliability["policy"]["temperature"] <= 10
    assert set(reliability["gate"]) >= {"mid_means", "final_projection", "orientation_weight"}
    assert metrics["best_epoch"] == result.best_epoch and metrics["skipped"] == []
    for figure in ("curves.png", "confusion_matrix.png"):
        image = cv2.imread(str(out / figure))
        assert image is not None and image.shape[0] > 300 and image.shape[1] > 300 and image.std() > 10


def _state(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_same_seed_gives_the_same_run_and_another_seed_does_not(small_dataset, tmp_path):
    config = TrainConfig(arch="simple_cnn", **TINY | {"image_size": 32})
    first = train(config, small_dataset, tmp_path / "a")
    again = train(config, small_dataset, tmp_path / "b")
    train(TrainConfig(arch="simple_cnn", seed=1, **TINY | {"image_size": 32}), small_dataset, tmp_path / "c")
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(first.history) == strip(again.history)
    a, b, c = (_state(tmp_path / name / CHECKPOINT_NAME) for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_an_existing_run_is_never_overwritten(small_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes(b"precious")
    with pytest.raises(CxrEdgeError, match="already holds a training run"):
        train(TrainConfig(arch="simple_cnn", **TINY), small_dataset, out)
    assert (out / CHECKPOINT_NAME).read_bytes() == b"precious"


def test_cli_train_prints_the_per_class_table(small_dataset, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cxr_edge.cli", "train", "--data", str(small_dataset), "--out", str(tmp_path / "run"),
         "--arch", "simple_cnn", "--epochs", "1", "--image-size", "32", "--batch-size", "8"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for word in ("normal", "covid19", "bacterial_pneumonia", "viral_pneumonia", "precision", "recall", "macro-F1"):
        assert word in result.stdout
    assert "epoch  1" in result.stderr
    assert (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_cli_errors_are_one_line_with_exit_code_1(small_dataset, tmp_path):
    bad = tmp_path / "bad"
    (bad / "tuberculosis").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-m", "cxr_edge.cli", "train", "--data", str(bad), "--out",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"cxr-edge: error: {bad}: unknown class folders: tuberculosis (expected folders named for normal, covid19, "
        "bacterial_pneumonia, viral_pneumonia, a common alias such as COVID-19, Normal, pneumonia_bac or 0-3, or a "
        "coarse label such as pneumonia)"]
    assert "Traceback" not in result.stderr


def test_val_fraction_zero_trains_on_everything_for_the_given_epochs(small_dataset, tmp_path):
    result = train(TrainConfig(arch="simple_cnn", **TINY | {"val_fraction": 0.0, "image_size": 32}), small_dataset,
                   tmp_path / "all")
    assert result.epochs_run == 2 and result.best_epoch == 2 and result.report is None
    checkpoint = load_checkpoint(tmp_path / "all" / CHECKPOINT_NAME)
    assert checkpoint["provenance"]["train_files"] == 24 and checkpoint["provenance"]["val_files"] == 0
    assert (tmp_path / "all" / "curves.png").exists() and not (tmp_path / "all" / "confusion_matrix.png").exists()


@pytest.fixture()
def with_coarse(small_dataset, data_dirs, tmp_path):
    """The small four-class set and, as a second root, twelve NIH adult pneumonias (type unknown) with their
    manifest rows: numeric ages, views, patients."""
    nih = next(d for d in data_dirs if (d / "pneumonia").is_dir())
    root = tmp_path / "nih"
    (root / "pneumonia").mkdir(parents=True)
    rows = (nih / "MANIFEST.tsv").read_text().splitlines()
    kept = [rows[0]] + [r for r in rows[1:] if r.split("\t")[0] == "pneumonia"][:12]
    for row in kept[1:]:
        name = row.split("\t")[-1]
        (root / name).write_bytes((nih / name).read_bytes())
    (root / "MANIFEST.tsv").write_text("\n".join(kept) + "\n")
    return [small_dataset, root]


def test_coarse_labels_are_trained_on_and_supervise_only_their_sum(with_coarse, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**TINY), with_coarse, out, console=None)
    checkpoint = load_checkpoint(out / CHECKPOINT_NAME)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["pneumonia"] == 12 and "pneumonia/nih-cxr14/adult" in metrics["cells"]
    assert checkpoint["populations"]["bacterial_pneumonia"] == ["child"]  # a coarse label teaches no subtype
    assert [f.name for f in checkpoint["contract"].findings] == ["pneumonia"]
    assert set(metrics["findings"]["per_finding"]) == {"normal", "covid19", "pneumonia"}
    coarse = [f for f in metrics["val_files"] if f["label"] == "pneumonia"]
    assert coarse and all(f["view"] in ("PA", "AP") and f["age"] == "adult" for f in coarse)
    train_part, val_part = stratified_split(scan_dataset(with_coarse).samples, 0.25, 0)
    assert {s.group for s in train_part}.isdisjoint({s.group for s in val_part})
    policy = checkpoint["reliability"]["policy"]
    assert policy["abstain_on"] == "finding" and policy["abstain_below"] > 0.25  # above a four-class floor
    reliability = metrics["reliability"]
    assert 0 < reliability["uncertain_share"] <= 0.2  # the share it was fitted to flag, on so few images


def test_the_partial_label_loss():
    from cxr_edge.export.labels import partial_nll

    logits = torch.tensor([[2.0, 0.5, 1.0, -1.0]], requires_grad=True)
    one = torch.tensor([[False, False, True, False]])
    reference = torch.nn.functional.cross_entropy(logits, torch.tensor([2]), label_smoothing=0.1)
    assert torch.allclose(partial_nll(logits, one, 0.1), reference)  # one class: label-smoothed cross-entropy
    both = torch.tensor([[False, False, True, True]])
    loss = partial_nll(logits, both).sum()
    loss.backward()
    p = logits.detach().softmax(dim=1)[0]
    assert torch.isclose(loss, -torch.log(p[2] + p[3]))
    grad = logits.grad[0]  # the allowed classes go up in proportion to their share (never apart), the others down
    assert grad[2] < 0 and grad[3] < 0 and torch.isclose(grad[2] / grad[3], p[2] / p[3])
    assert torch.allclose(grad[:2], p[:2])
