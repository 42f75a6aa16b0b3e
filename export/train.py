"""Transfer learning of the 4-class chest X-ray classifier, on data that mixes hospitals and age groups.

Two aims. A score that does not swing from epoch to epoch on a few hundred images: the generic early layers stay
frozen, AdamW warms up and then follows a cosine schedule, the loss has label smoothing, and the epoch kept is the
one with the lowest validation loss. And a model that learns the disease rather than the hospital: in the shared
data each class-and-age cell comes from one source, so every cue of a source (resolution, file format, contrast,
borders) predicts the label. Hence:
- batches drawn so that every class weighs the same and, within a class, every source the same;
- augmentation against those cues: random down- and up-scaling (0.35-1x), edge enhancement, noise, JPEG
  re-encoding, gamma, contrast and brightness, small crops of the border, besides small rotations, scaling and
  shifts (never a flip: the heart's side is information);
- per-image intensity standardisation in the contract (`Contract.intensity`), applied after augmentation;
- the epoch chosen by a validation loss in which every class-and-source cell weighs the same, so that the large
  cells cannot hide a failing small one.
After training, `reliability.fit_reliability` fits what lets the runtime say "I don't know": a temperature, an
abstention threshold and the gate (how unlike the training images an input is, and whether it is upright).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn

from ..runtime.errors import CxrEdgeError
from ..runtime.evaluation.dataset import CLASS_NAMES, Sample, scan_dataset
from ..runtime.evaluation.metrics import classification_report, group_report
from ..runtime.model.contract import Contract
from ..runtime.model.preprocess import to_input
from .config import TrainConfig
from .data import load_resized, manifest_hash, stratified_split
from .plots import plot_confusion_matrix, plot_curves
from .provenance import git_commit, package_version
from .zoo import arch_spec, build_model, read_torch_file

__all__ = ["TrainConfig", "TrainResult", "train", "augment", "cell_weights", "load_checkpoint", "CHECKPOINT_NAME",
           "CHECKPOINT_FORMAT"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "cxr-edge-checkpoint/1"


@dataclass
class TrainResult:
    """What a run produced: the output folder, the selected epoch and the validation report."""

    out_dir: Path
    best_epoch: int
    epochs_run: int
    report: dict
    history: list[dict]
    seconds: float
    skipped: list[tuple[Path, str]]


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random, X-ray-plausible changes to a batch of resized images (N x H x W in [0, 1]).

    Geometry: rotation up to 10 degrees, scale 0.9-1.1, shift up to 6 %, and (half the time) a crop of up to 8 %
    of each border. Acquisition and file history, the cues that tell hospitals apart: (half the time) down-scaling
    to 0.35-1x and back, (30 %) edge enhancement, (half the time) Gaussian noise of up to 4 % of the range,
    (a third of the time) JPEG re-encoding at quality 50-95, gamma 0.7-1.4, and brightness/contrast jitter.
    Without noise and sharpening, a model trained on the shared data called 72-98 % of adult normals COVID-19
    once 3 % noise was added: the normals of one source are smooth (twice downscaled) files. No flips: a
    mirrored chest does not occur, and the heart's side is information.
    """
    out = np.empty_like(images)
    height, width = images.shape[1:]
    for i, image in enumerate(images):
        angle = rng.uniform(-10, 10)
        scale = rng.uniform(0.9, 1.1)
        shift = rng.uniform(-0.06, 0.06, size=2) * (width, height)
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
        matrix[:, 2] += shift
        warped = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        if rng.random() < 0.5:
            top, bottom, left, right = (rng.uniform(0, 0.08, size=4) * (height, height, width, width)).astype(int)
            warped = cv2.resize(warped[top:height - bottom, left:width - right], (width, height),
                                interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            factor = rng.uniform(0.35, 1.0)
            small = (max(8, round(width * factor)), max(8, round(height * factor)))
            warped = cv2.resize(cv2.resize(warped, small, interpolation=cv2.INTER_AREA), (width, height),
                                interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.3:  # edge enhancement, as many consoles apply
            blurred = cv2.GaussianBlur(warped, (0, 0), rng.uniform(0.5, 2.0))
            warped = warped + np.float32(rng.uniform(0.3, 1.5)) * (warped - blurred)
        if rng.random() < 0.5:  # detector and quantum noise: smooth files must not mean "from that hospital"
            warped = warped + rng.normal(0, rng.uniform(0.005, 0.04), warped.shape).astype(np.float32)
        warped = np.clip(warped, 0.0, 1.0)
        if rng.random() < 1 / 3:
            levels = np.uint8(np.clip(np.rint(warped * 255), 0, 255))
            encoded = cv2.imencode(".jpg", levels, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 96))])[1]
            warped = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).astype(np.float32) * np.float32(1 / 255)
        warped = np.clip(warped, 0.0, 1.0) ** np.float32(rng.uniform(0.7, 1.4))
        contrast = rng.uniform(0.85, 1.15)
        brightness = rng.uniform(-0.08, 0.08)
        mean = float(warped.mean())
        out[i] = np.clip((warped - mean) * contrast + mean + brightness, 0.0, 1.0)
    return out


def cell_weights(samples: Sequence[Sample]) -> np.ndarray:
    """Per-sample weights under which every class weighs the same and, within a class, every source the same."""
    cells = Counter((s.label, s.source) for s in samples)
    sources_per_class = Counter(label for label, _ in cells)
    weights = np.asarray([1.0 / (len(sources_per_class) * sources_per_class[s.label] * cells[s.label, s.source])
                          for s in samples])
    return weights / weights.sum()


def _inputs(images: np.ndarray, contract: Contract) -> torch.Tensor:
    """Resized images -> normalised N x C x H x W tensor, through the runtime's own `to_input`."""
    return torch.from_numpy(to_input(images, contract)).contiguous(memory_format=torch.channels_last)


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 10 % to the peak, then cosine decay to 1 % of it."""
    if step < warmup_steps:
        return 0.1 + 0.9 * step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only weight matrices and kernels; biases and norm parameters stay undecayed."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, weights: np.ndarray,
              batch_size: int) -> tuple[float, np.ndarray]:
    """Weighted mean cross-entropy (no smoothing) and predicted labels.

    `weights` (`cell_weights` of the validation images) make every class-and-source cell count the same.
    """
    model.eval()
    logits = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            logits.append(model(inputs[start:start + batch_size]))
    stacked = torch.cat(logits)
    losses = nn.functional.cross_entropy(stacked, labels, reduction="none").numpy()
    return float(np.sum(losses * weights)), stacked.argmax(dim=1).numpy()


def _set_train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    model.train()
    for module in frozen:
        module.eval()  # frozen layers keep their ImageNet batch-norm statistics


def _prepare_out_dir(out_dir: Path) -> None:
    if (out_dir / CHECKPOINT_NAME).exists():
        raise CxrEdgeError(f"{out_dir} already holds a training run ({CHECKPOINT_NAME}); choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)


def train(config: TrainConfig, data_dirs: str | Path | Sequence[str | Path], out_dir: str | Path, *,
          console: Any = None, progress: bool = True) -> TrainResult:
    """Train a classifier on one or more class-folder datasets and write every artefact of the run to `out_dir`.

    Args:
        config: the run's settings.
        data_dirs: class-folder datasets (see `cxr_edge.runtime.evaluation.dataset.scan_dataset`); their images
            are pooled, each keeping its source, patient and age group.
        out_dir: new or empty folder for checkpoint.pt, history.json, metrics.json, curves.png and
            confusion_matrix.png; an existing run there is never overwritten.
        console: a rich Console for progress and the final table (None: silent).
        progress: show progress bars on the console.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .reliability import fit_reliability

    started = time.perf_counter()
    out_dir = Path(out_dir)
    spec = arch_spec(config.arch)
    _prepare_out_dir(out_dir)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    rng = np.random.default_rng(config.seed)
    say = console.print if console is not None else (lambda *a, **k: None)

    contract = Contract(input_size=(config.image_size, config.image_size), class_names=CLASS_NAMES,
                        channels=spec.channels, mean=spec.mean, std=spec.std, intensity=config.intensity)
    dataset = scan_dataset(data_dirs)
    if config.exclude_sources:
        dataset.samples = [s for s in dataset.samples if s.source not in config.exclude_sources]
    validate = config.val_fraction > 0  # 0: train on everything for a fixed number of epochs
    train_samples, val_samples = (stratified_split(dataset.samples, config.val_fraction, config.split_seed)
                                  if validate else (dataset.samples, []))
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, disable=console is None or not progress, transient=True)
    with bar:
        task = bar.add_task("decoding images", total=len(dataset.samples))
        train_x, train_kept, train_failed = load_resized(train_samples, contract,
                                                         on_progress=lambda: bar.advance(task))
        val_x, val_kept, val_failed = load_resized(val_samples, contract, on_progress=lambda: bar.advance(task))
    train_y = np.asarray([s.label for s in train_kept], np.int64)
    val_y = np.asarray([s.label for s in val_kept], np.int64)
    skipped = dataset.skipped + train_failed + val_failed
    for path, reason in skipped:
        say(f"[yellow]skipped[/] {path}: {reason}")
    if len(train_x) < 2 or (validate and len(val_x) < 1):
        raise CxrEdgeError(f"{', '.join(map(str, dataset.roots))}: too few readable images to train "
                           f"({len(train_x)} train, {len(val_x)} val)")
    say(f"{len(train_x)} training and {len(val_x)} validation images ({len({s.group for s in train_kept})} and "
        f"{len({s.group for s in val_kept})} patients), {len(skipped)} skipped; {config.arch} at "
        f"{config.image_size} px, intensity {config.intensity}")
    say("per epoch: loss and accuracy as train/validation (every class-and-source cell weighing the same), "
        "validation macro-F1 and worst cell")

    model, weights_source = build_model(config.arch, len(CLASS_NAMES), weights=config.weights,
                                        pretrained=config.pretrained)
    frozen = spec.early_layers(model) if config.freeze_early and weights_source != "random initialisation" else []
    for module in frozen:
        module.requires_grad_(False)
    model = model.to(memory_format=torch.channels_last)
    ema = ModelEmaV3(model, decay=config.ema_decay, use_warmup=True) if config.ema_decay > 0 else None
    kept = ema.module if ema is not None else model  # the weights that are validated and saved

    sampling = cell_weights(train_kept) if config.balanced else np.full(len(train_kept), 1 / len(train_kept))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    steps_per_epoch = math.ceil(len(train_x) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, steps_per_epoch * config.warmup_epochs, total_steps))
    val_inputs = _inputs(val_x, contract) if validate else None
    val_labels = torch.from_numpy(val_y)
    val_weights = cell_weights(val_kept) if validate else None
    val_cells = [f"{CLASS_NAMES[s.label]}/{s.source}/{s.age}" for s in val_kept]

    history: list[dict] = []
    best: dict[str, Any] = {"loss": math.inf}
    with bar:
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            _set_train_mode(model, frozen)
            order = rng.choice(len(train_x), size=len(train_x), replace=True, p=sampling)
            batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
            if len(batches) > 1 and len(batches[-1]) < 2:  # batch norm cannot train on a single image
                batches[-2] = np.concatenate(batches[-2:])
                batches.pop()
            task = bar.add_task(f"epoch {epoch}/{config.epochs}", total=len(batches))
            loss_sum, correct = 0.0, 0
            for index in batches:
                inputs = _inputs(augment(train_x[index], rng), contract)
                targets = torch.from_numpy(train_y[index])
                logits = model(inputs)
                loss = criterion(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model, step=scheduler.last_epoch)
                loss_sum += loss.item() * len(index)
                correct += int((logits.argmax(dim=1) == targets).sum())
                bar.advance(task)
            bar.remove_task(task)
            row = {"epoch": epoch, "train_loss": loss_sum / len(train_x), "train_accuracy": correct / len(train_x),
                   "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - epoch_start}
            if not validate:  # no selection possible: keep the last (averaged) weights
                history.append(row)
                best = {"loss": math.nan, "epoch": epoch, "report": None,
                        "state": {k: v.detach().clone() for k, v in kept.state_dict().items()}}
                say(f"epoch {epoch:>2}  loss {row['train_loss']:.3f}  acc {row['train_accuracy']:.3f}  "
                    f"{row['seconds']:3.0f} s", highlight=False)
                continue
            val_loss, val_pred = _evaluate(kept, val_inputs, val_labels, val_weights, config.batch_size * 2)
            report = classification_report(val_y, val_pred, CLASS_NAMES)
            cells = group_report(val_y, val_pred, val_cells, CLASS_NAMES)
            worst = min(cells.items(), key=lambda item: item[1]["accuracy"])
            row |= {"val_loss": val_loss, "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"],
                    "val_balanced_accuracy": float(np.sum(val_weights * (val_pred == val_y))),
                    "val_worst_cell": worst[0], "val_worst_cell_accuracy": worst[1]["accuracy"]}
            history.append(row)
            improved = val_loss < best["loss"]
            if improved:
                best = {"loss": val_loss, "epoch": epoch, "report": report,
                        "state": {k: v.detach().clone() for k, v in kept.state_dict().items()}}
            say(f"epoch {epoch:>2}  loss {row['train_loss']:.3f}/{val_loss:.3f}  "
                f"acc {row['train_accuracy']:.3f}/{row['val_balanced_accuracy']:.3f}  F1 {report['macro_f1']:.3f}  "
                f"worst {worst[1]['accuracy']:.2f} ({worst[0]})  {row['seconds']:3.0f} s"
                f"{'  best' if improved else ''}", highlight=False)
            if epoch - best["epoch"] >= config.patience:
                say(f"no lower validation loss for {config.patience} epochs: stopping")
                break

    kept.load_state_dict(best["state"])
    kept.eval()
    say("fitting the temperature, the abstention threshold and the gate")
    reliability = fit_reliability(kept, config.arch, contract, train_x, train_kept, val_x if validate else None,
                                  val_kept if validate else None, seed=config.seed)
    seconds = time.perf_counter() - started
    provenance = {
        "seed": config.seed, "split_seed": config.split_seed, "val_fraction": config.val_fraction,
        "data_manifest_hash": manifest_hash(dataset.samples), "data_roots": [r.name for r in dataset.roots],
        "cells": dataset.cells(), "train_files": len(train_x), "val_files": len(val_x),
        "train_patients": len({s.group for s in train_kept}), "val_patients": len({s.group for s in val_kept}),
        "weights_source": weights_source, "package_version": package_version(), "git_commit": git_commit(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "torch_version": str(torch.__version__),
    }
    populations = {name: sorted({s.age for s in train_kept if s.label == i}) for i, name in enumerate(CLASS_NAMES)}
    metrics = {"validation": best["report"], "best_epoch": best["epoch"], "best_val_loss": best["loss"],
               "epochs_run": len(history), "train_seconds": seconds, "counts": dataset.counts(),
               "cells": dataset.cells(), "populations": populations,
               "reliability": reliability["figures"],
               "skipped": [{"path": str(p), "reason": r} for p, r in skipped], "config": dataclasses.asdict(config)}
    if validate:
        hits_by = {"cell": val_cells, "age": [s.age for s in val_kept], "source": [s.source for s in val_kept]}
        patients = [s.group for s in val_kept]
        metrics["groups"] = {kind: group_report(val_y, reliability["val_pred"], keys, CLASS_NAMES, patients)
                             for kind, keys in hits_by.items()}
        metrics["val_files"] = [{"file": s.key, "label": CLASS_NAMES[s.label], "source": s.source, "age": s.age,
                                 "patient": s.group, "predicted": CLASS_NAMES[p]}
                                for s, p in zip(val_kept, reliability["val_pred"], strict=True)]
    torch.save({"format": CHECKPOINT_FORMAT, "arch": config.arch, "state_dict": best["state"],
                "contract": contract.to_dict(), "provenance": provenance, "metrics": best["report"],
                "reliability": reliability["parameters"], "populations": populations,
                "config": dataclasses.asdict(config)}, out_dir / CHECKPOINT_NAME)
    (out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics | {"provenance": provenance}, indent=2) + "\n")
    plot_curves(history, out_dir / "curves.png", best["epoch"] if validate else None)
    if validate:
        plot_confusion_matrix(best["report"]["confusion_matrix"], CLASS_NAMES, out_dir / "confusion_matrix.png")
    return TrainResult(out_dir, best["epoch"], len(history), best["report"], history, seconds, skipped)


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint and check that it is one (format tag, contract)."""
    path = Path(path)
    checkpoint = read_torch_file(path, "cxr-edge checkpoint")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CxrEdgeError(f"{path}: not a cxr-edge checkpoint (expected format {CHECKPOINT_FORMAT})")
    checkpoint["contract"] = Contract.from_dict(checkpoint["contract"])
    return checkpoint
