"""Transfer learning of the 4-class chest X-ray classifier.

The recipe aims at a score that does not swing from epoch to epoch on a few hundred images: the generic early
layers stay frozen, AdamW warms up and then follows a cosine schedule, the loss is class-weighted with label
smoothing, augmentation stays within what an X-ray can look like (small rotation, scale, shift,
brightness/contrast; never a vertical flip), and the epoch kept is the one with the lowest validation loss.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn

from ..runtime.contract import Contract
from ..runtime.dataset import CLASS_NAMES, scan_dataset
from ..runtime.errors import CxrEdgeError
from ..runtime.metrics import classification_report
from ..runtime.preprocess import to_input
from .config import TrainConfig
from .data import load_resized, manifest_hash, stratified_split
from .plots import plot_confusion_matrix, plot_curves
from .provenance import git_commit, package_version
from .zoo import arch_spec, build_model, read_torch_file

__all__ = ["TrainConfig", "TrainResult", "train", "augment", "load_checkpoint", "CHECKPOINT_NAME",
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

    Rotation up to 10 degrees, scale 0.9-1.1, shift up to 6 % and brightness/contrast jitter. No flips: a
    vertically flipped chest does not occur, and the heart's side is information.
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
        contrast = rng.uniform(0.85, 1.15)
        brightness = rng.uniform(-0.08, 0.08)
        mean = float(warped.mean())
        out[i] = np.clip((warped - mean) * contrast + mean + brightness, 0.0, 1.0)
    return out


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


def _evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
              batch_size: int) -> tuple[float, np.ndarray]:
    """Mean cross-entropy (no smoothing, no class weights) and predicted labels."""
    model.eval()
    logits = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            logits.append(model(inputs[start:start + batch_size]))
    stacked = torch.cat(logits)
    loss = nn.functional.cross_entropy(stacked, labels).item()
    return loss, stacked.argmax(dim=1).numpy()


def _set_train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    model.train()
    for module in frozen:
        module.eval()  # frozen layers keep their ImageNet batch-norm statistics


def _prepare_out_dir(out_dir: Path) -> None:
    if (out_dir / CHECKPOINT_NAME).exists():
        raise CxrEdgeError(f"{out_dir} already holds a training run ({CHECKPOINT_NAME}); choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)


def train(config: TrainConfig, data_dir: str | Path, out_dir: str | Path, *, console: Any = None,
          progress: bool = True) -> TrainResult:
    """Train a classifier on a class-folder dataset and write every artefact of the run to `out_dir`.

    Args:
        config: the run's settings.
        data_dir: a class-folder dataset (see `cxr_edge.runtime.dataset.scan_dataset`).
        out_dir: new or empty folder for checkpoint.pt, history.json, metrics.json, curves.png and
            confusion_matrix.png; an existing run there is never overwritten.
        console: a rich Console for progress and the final table (None: silent).
        progress: show progress bars on the console.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    started = time.perf_counter()
    out_dir = Path(out_dir)
    spec = arch_spec(config.arch)
    _prepare_out_dir(out_dir)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    rng = np.random.default_rng(config.seed)
    say = console.print if console is not None else (lambda *a, **k: None)

    contract = Contract(input_size=(config.image_size, config.image_size), class_names=CLASS_NAMES,
                        channels=spec.channels, mean=spec.mean, std=spec.std)
    dataset = scan_dataset(data_dir)
    validate = config.val_fraction > 0  # 0: train on everything for a fixed number of epochs (release models)
    train_samples, val_samples = (stratified_split(dataset.samples, config.val_fraction, config.split_seed)
                                  if validate else (dataset.samples, []))
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, disable=console is None or not progress, transient=True)
    with bar:
        task = bar.add_task("decoding images", total=len(dataset.samples))
        train_x, train_y, train_failed = load_resized(train_samples, contract, on_progress=lambda: bar.advance(task))
        val_x, val_y, val_failed = load_resized(val_samples, contract, on_progress=lambda: bar.advance(task))
    skipped = dataset.skipped + train_failed + val_failed
    for path, reason in skipped:
        say(f"[yellow]skipped[/] {path}: {reason}")
    if len(train_x) < 2 or (validate and len(val_x) < 1):
        raise CxrEdgeError(f"{data_dir}: too few readable images to train ({len(train_x)} train, {len(val_x)} val)")
    say(f"{len(train_x)} training and {len(val_x)} validation images, {len(skipped)} skipped; "
        f"{config.arch} at {config.image_size} px")
    say("per epoch: loss and accuracy as train/validation, validation macro-F1")

    model, weights_source = build_model(config.arch, len(CLASS_NAMES), weights=config.weights,
                                        pretrained=config.pretrained)
    frozen = spec.early_layers(model) if config.freeze_early and weights_source != "random initialisation" else []
    for module in frozen:
        module.requires_grad_(False)
    model = model.to(memory_format=torch.channels_last)
    ema = ModelEmaV3(model, decay=config.ema_decay, use_warmup=True) if config.ema_decay > 0 else None
    kept = ema.module if ema is not None else model  # the weights that are validated and saved

    counts = np.bincount(train_y, minlength=len(CLASS_NAMES)).astype(np.float64)
    class_weights = torch.tensor(len(train_y) / (len(CLASS_NAMES) * np.maximum(counts, 1)), dtype=torch.float32)
    criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=config.label_smoothing)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    steps_per_epoch = math.ceil(len(train_x) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, steps_per_epoch * config.warmup_epochs, total_steps))
    val_inputs = _inputs(val_x, contract) if validate else None
    val_labels = torch.from_numpy(val_y)

    history: list[dict] = []
    best: dict[str, Any] = {"loss": math.inf}
    with bar:
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            _set_train_mode(model, frozen)
            order = rng.permutation(len(train_x))
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
            val_loss, val_pred = _evaluate(kept, val_inputs, val_labels, config.batch_size * 2)
            report = classification_report(val_y, val_pred, CLASS_NAMES)
            row |= {"val_loss": val_loss, "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"]}
            history.append(row)
            improved = val_loss < best["loss"]
            if improved:
                best = {"loss": val_loss, "epoch": epoch, "report": report,
                        "state": {k: v.detach().clone() for k, v in kept.state_dict().items()}}
            say(f"epoch {epoch:>2}  loss {row['train_loss']:.3f}/{val_loss:.3f}  "
                f"acc {row['train_accuracy']:.3f}/{report['accuracy']:.3f}  F1 {report['macro_f1']:.3f}  "
                f"{row['seconds']:3.0f} s{'  best' if improved else ''}", highlight=False)
            if epoch - best["epoch"] >= config.patience:
                say(f"no lower validation loss for {config.patience} epochs: stopping")
                break

    seconds = time.perf_counter() - started
    provenance = {
        "seed": config.seed, "split_seed": config.split_seed, "val_fraction": config.val_fraction,
        "data_manifest_hash": manifest_hash(dataset.samples, dataset.root),
        "train_files": len(train_x), "val_files": len(val_x), "weights_source": weights_source,
        "package_version": package_version(), "git_commit": git_commit(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "torch_version": str(torch.__version__),
    }
    metrics = {"validation": best["report"], "best_epoch": best["epoch"], "best_val_loss": best["loss"],
               "epochs_run": len(history), "train_seconds": seconds, "counts": dataset.counts(),
               "skipped": [{"path": str(p), "reason": r} for p, r in skipped], "config": dataclasses.asdict(config)}
    torch.save({"format": CHECKPOINT_FORMAT, "arch": config.arch, "state_dict": best["state"],
                "contract": contract.to_dict(), "provenance": provenance, "metrics": best["report"],
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
