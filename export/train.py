"""Transfer learning of the chest X-ray classifier, on data that mixes hospitals, age groups and label detail.

Two aims. A score that does not swing from epoch to epoch on a few hundred images: the generic early layers stay
frozen, AdamW warms up and then follows a cosine schedule, the loss has label smoothing, and the epoch kept is the
one with the lowest validation loss. And a model that learns the disease rather than the hospital: in the shared
data each class-and-age cell comes from one source, so every cue of a source (resolution, file format, contrast,
borders) predicts the label. Hence:
- batches drawn so that every label weighs the same and, within a label, every source the same;
- augmentation against those cues: random down- and up-scaling (0.35-1x), edge enhancement, noise, JPEG
  re-encoding, gamma, contrast and brightness, small crops of the border, besides small rotations, scaling and
  shifts (never a flip: the heart's side is information);
- per-image intensity standardisation in the contract (`Contract.intensity`), applied after augmentation;
- the epoch chosen by a validation loss in which every label-and-source cell weighs the same, so that the large
  cells cannot hide a failing small one.
Coarse labels (a ``pneumonia`` folder: bacterial or viral, not known which) supervise only what they say: the loss
of such an image is the negative log of the summed probability of the classes it allows, so it teaches "a
pneumonia" and leaves the subtype to the images that name it.
After training, `reliability.fit_reliability` fits what lets the runtime say "I don't know": a temperature, an
abstention threshold and the gate (how unlike the training images an input is, and whether it is upright).

The run is a sequence of named steps: `load_data`, `build_network`, `fit` (epochs, each validated), then
`fit_reliability`, and `write_run` (checkpoint, history, metrics, plots).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn

from ..runtime.errors import CxrEdgeError
from ..runtime.evaluation.dataset import Dataset, Sample, scan_dataset
from ..runtime.evaluation.metrics import classification_report, finding_report, group_hits
from ..runtime.model.contract import Contract
from ..runtime.model.preprocess import to_input
from .config import TrainConfig
from .data import load_resized, manifest_hash, stratified_split
from .labels import allowed_mask, partial_nll
from .plots import plot_confusion_matrix, plot_curves
from .provenance import git_commit, package_version
from .zoo import ArchSpec, arch_spec, build_model, read_torch_file

__all__ = ["TrainConfig", "TrainResult", "TrainingData", "train", "augment", "Augmentation", "AUGMENTATIONS",
           "cell_weights", "load_checkpoint", "CHECKPOINT_NAME", "CHECKPOINT_FORMAT"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "cxr-edge-checkpoint/1"
THAWED_LR_SCALE = 0.1
"""The early layers, once thawed (`TrainConfig.thaw_epoch`), learn at this share of the rate of the others."""


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


@dataclass
class TrainingData:
    """The decoded, resized images of both sides of the split, their samples and what could not be read."""

    dataset: Dataset
    train_x: np.ndarray
    train: list[Sample]
    val_x: np.ndarray
    val: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def validated(self) -> bool:
        return len(self.val) > 0


@dataclass(frozen=True)
class Augmentation:
    """How strongly training images are changed, as one object (`AUGMENTATIONS` names the presets).

    Geometry: rotation, scale, shift and (half the time) a crop of each border. Acquisition and file history, the
    cues that tell hospitals apart: down-scaling and back, edge enhancement, local contrast equalisation (CLAHE,
    which many consoles apply), blur, Gaussian noise, JPEG re-encoding, gamma, brightness and contrast.
    """

    rotation: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.06
    border_crop: float = 0.08
    downscale: tuple[float, float] = (0.35, 1.0)
    sharpen: tuple[float, float, float] = (0.3, 0.3, 1.5)  # probability, lowest and highest amount
    clahe: float = 0.0
    blur: float = 0.0
    noise: tuple[float, float] = (0.5, 0.04)  # probability, largest standard deviation
    jpeg: float = 1 / 3
    gamma: tuple[float, float] = (0.7, 1.4)
    contrast: tuple[float, float] = (0.85, 1.15)


AUGMENTATIONS = {
    "standard": Augmentation(),
    "strong": Augmentation(rotation=12.0, scale=(0.85, 1.15), shift=0.08, border_crop=0.12, downscale=(0.25, 1.0),
                           sharpen=(0.4, 0.3, 2.0), clahe=0.3, blur=0.2, noise=(0.5, 0.06), jpeg=0.4,
                           gamma=(0.5, 2.0), contrast=(0.7, 1.3)),
}
"""``standard``: the recipe that made the earlier releases; ``strong``: wider ranges of every acquisition change,
plus CLAHE and blur, for data whose sources differ in processing."""


def augment(images: np.ndarray, rng: np.random.Generator, recipe: Augmentation = AUGMENTATIONS["standard"]
            ) -> np.ndarray:
    """Random, X-ray-plausible changes to a batch of resized images (N x H x W in [0, 1]).

    Without noise and sharpening, a model trained on the shared data called 72-98 % of adult normals COVID-19
    once 3 % noise was added: the normals of one source are smooth (twice downscaled) files. No flips: a
    mirrored chest does not occur, and the heart's side is information.
    """
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = _acquisition(_geometry(image, rng, recipe), rng, recipe)
    return out


def _geometry(image: np.ndarray, rng: np.random.Generator, recipe: Augmentation) -> np.ndarray:
    height, width = image.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-recipe.rotation, recipe.rotation),
                                     rng.uniform(*recipe.scale))
    matrix[:, 2] += rng.uniform(-recipe.shift, recipe.shift, size=2) * (width, height)
    warped = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0.0)
    if rng.random() < 0.5:
        top, bottom, left, right = (rng.uniform(0, recipe.border_crop, size=4) * (height, height, width, width)
                                    ).astype(int)
        warped = cv2.resize(warped[top:height - bottom, left:width - right], (width, height),
                            interpolation=cv2.INTER_AREA)
    return warped


def _acquisition(image: np.ndarray, rng: np.random.Generator, recipe: Augmentation) -> np.ndarray:
    height, width = image.shape
    if rng.random() < 0.5:
        factor = rng.uniform(*recipe.downscale)
        small = (max(8, round(width * factor)), max(8, round(height * factor)))
        image = cv2.resize(cv2.resize(image, small, interpolation=cv2.INTER_AREA), (width, height),
                           interpolation=cv2.INTER_LINEAR)
    if rng.random() < recipe.clahe:
        levels = np.uint8(np.clip(np.rint(image * 255), 0, 255))
        clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(1.0, 3.0)), tileGridSize=(8, 8))
        image = clahe.apply(levels).astype(np.float32) * np.float32(1 / 255)
    if rng.random() < recipe.blur:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < recipe.sharpen[0]:  # edge enhancement, as many consoles apply
        blurred = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 2.0))
        image = image + np.float32(rng.uniform(*recipe.sharpen[1:])) * (image - blurred)
    if rng.random() < recipe.noise[0]:  # detector and quantum noise: smooth files must not mean "that hospital"
        image = image + rng.normal(0, rng.uniform(0.005, recipe.noise[1]), image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0)
    if rng.random() < recipe.jpeg:
        levels = np.uint8(np.clip(np.rint(image * 255), 0, 255))
        encoded = cv2.imencode(".jpg", levels, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 96))])[1]
        image = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).astype(np.float32) * np.float32(1 / 255)
    image = np.clip(image, 0.0, 1.0) ** np.float32(rng.uniform(*recipe.gamma))
    contrast, brightness = rng.uniform(*recipe.contrast), rng.uniform(-0.08, 0.08)
    mean = float(image.mean())
    return np.clip((image - mean) * contrast + mean + brightness, 0.0, 1.0)


def cell_weights(samples: Sequence[Sample], label_weights: dict[str, float] | None = None) -> np.ndarray:
    """Per-sample weights under which every label weighs the same (or as `label_weights` says) and, within a label,
    every source the same."""
    cells = Counter((s.label, s.source) for s in samples)
    sources_per_label = Counter(label for label, _ in cells)
    labels = len(sources_per_label)
    weights = np.asarray([(label_weights or {}).get(s.label, 1.0) /
                          (labels * sources_per_label[s.label] * cells[s.label, s.source]) for s in samples])
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


def _param_groups(model: nn.Module, weight_decay: float, lr: float, frozen: Sequence[nn.Module],
                  frozen_lr: float) -> list[dict]:
    """Decay only weight matrices and kernels; biases and norm parameters stay undecayed. The frozen layers' own
    groups (with their lower rate) take part only once they are thawed: a parameter without a gradient is left
    alone by AdamW."""
    early = {id(p) for module in frozen for p in module.parameters()}
    groups = {(k, e): [] for k in (True, False) for e in (True, False)}
    for param in model.parameters():
        groups[param.ndim > 1, id(param) in early].append(param)
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr": frozen_lr if early else lr}
            for (decayed, early), params in groups.items() if params]


def _set_train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    model.train()
    for module in frozen:
        module.eval()  # frozen layers keep their ImageNet batch-norm statistics


def prepare_out_dir(out_dir: Path) -> None:
    if (out_dir / CHECKPOINT_NAME).exists():
        raise CxrEdgeError(f"{out_dir} already holds a training run ({CHECKPOINT_NAME}); choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)


# --- the steps of a run ------------------------------------------------------------------------------------


def load_data(config: TrainConfig, data_dirs: str | Path | Sequence[str | Path], contract: Contract,
              progress: Callable[[int], Callable[[], None]] | None = None) -> TrainingData:
    """Scan the roots, split by patient, and decode every image once through the runtime's loader."""
    dataset = scan_dataset(data_dirs, contract.class_names)
    if config.exclude_sources:
        dataset.samples = [s for s in dataset.samples if s.source not in config.exclude_sources]
    train_samples, val_samples = (stratified_split(dataset.samples, config.val_fraction, config.split_seed)
                                  if config.val_fraction > 0 else (dataset.samples, []))
    tick = progress(len(dataset.samples)) if progress is not None else None
    train_x, train_kept, train_failed = load_resized(train_samples, contract, on_progress=tick)
    val_x, val_kept, val_failed = load_resized(val_samples, contract, on_progress=tick)
    data = TrainingData(dataset, train_x, train_kept, val_x, val_kept, dataset.skipped + train_failed + val_failed)
    if len(train_x) < 2 or (config.val_fraction > 0 and len(val_x) < 1):
        raise CxrEdgeError(f"{', '.join(map(str, dataset.roots))}: too few readable images to train "
                           f"({len(train_x)} train, {len(val_x)} val)")
    return data


@dataclass
class Network:
    """The network being trained, the layers kept frozen, and the averaged weights that are validated and kept."""

    model: nn.Module
    frozen: list[nn.Module]
    ema: Any
    weights_source: str

    @property
    def kept(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


def build_network(config: TrainConfig, spec: ArchSpec, classes: int) -> Network:
    """The architecture with its starting weights, its early layers frozen, and an exponential moving average."""
    model, weights_source = build_model(config.arch, classes, weights=config.weights, pretrained=config.pretrained)
    frozen = spec.early_layers(model) if config.freeze_early and weights_source != "random initialisation" else []
    for module in frozen:
        module.requires_grad_(False)
    model = model.to(memory_format=torch.channels_last)
    ema = ModelEmaV3(model, decay=config.ema_decay, use_warmup=True) if config.ema_decay > 0 else None
    return Network(model, frozen, ema, weights_source)


@dataclass
class Validation:
    """The validation images as the loop needs them: inputs, allowed classes and the weight of every cell."""

    inputs: torch.Tensor
    allowed: torch.Tensor
    weights: np.ndarray
    samples: list[Sample]
    class_names: tuple[str, ...]

    def judge(self, model: nn.Module, batch_size: int) -> tuple[float, np.ndarray, dict]:
        """Cell-weighted partial negative log-likelihood (no smoothing), top classes, and the epoch's figures."""
        model.eval()
        with torch.inference_mode():
            logits = torch.cat([model(self.inputs[i:i + batch_size]) for i in range(0, len(self.inputs), batch_size)])
        losses = partial_nll(logits, self.allowed).numpy()
        top = logits.argmax(dim=1).numpy()
        hits = self.allowed.numpy()[np.arange(len(top)), top]
        cells = group_hits(hits, [self.class_names[i] for i in top], [s.cell for s in self.samples],
                           self.class_names)
        worst = min(cells.items(), key=lambda item: item[1]["accuracy"])
        exact = [i for i, s in enumerate(self.samples) if not s.coarse]
        report = classification_report([self.class_names.index(self.samples[i].label) for i in exact], top[exact],
                                       self.class_names)
        figures = {"val_accuracy": float(hits.mean()), "val_macro_f1": report["macro_f1"],
                   "val_balanced_accuracy": float(np.sum(self.weights * hits)), "val_worst_cell": worst[0],
                   "val_worst_cell_accuracy": worst[1]["accuracy"], "report": report}
        return float(np.sum(losses * self.weights)), top, figures


def validation_of(data: TrainingData, contract: Contract) -> Validation:
    """The validation side of a split, ready to judge a network (every run, and a soup of runs, alike)."""
    return Validation(_inputs(data.val_x, contract), torch.from_numpy(allowed_mask(data.val, contract.class_names)),
                      cell_weights(data.val), data.val, contract.class_names)


def _epoch(config: TrainConfig, network: Network, data: TrainingData, contract: Contract, optimizer: Any,
           scheduler: Any, sampling: np.ndarray, allowed: np.ndarray, rng: np.random.Generator,
           advance: Callable[[], None]) -> dict:
    """One pass of balanced batches with augmentation; returns the epoch's training loss and accuracy."""
    _set_train_mode(network.model, network.frozen)
    order = rng.choice(len(data.train_x), size=len(data.train_x), replace=True, p=sampling)
    batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # batch norm cannot train on a single image
        batches[-2] = np.concatenate(batches[-2:])
        batches.pop()
    loss_sum, correct = 0.0, 0
    for index in batches:
        inputs = _inputs(augment(data.train_x[index], rng, AUGMENTATIONS[config.augmentation]), contract)
        targets = torch.from_numpy(allowed[index])
        logits = network.model(inputs)
        loss = partial_nll(logits, targets, config.label_smoothing).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if network.ema is not None:
            network.ema.update(network.model, step=scheduler.last_epoch)
        loss_sum += loss.item() * len(index)
        correct += int(targets[torch.arange(len(index)), logits.argmax(dim=1)].sum())
        advance()
    return {"train_loss": loss_sum / len(data.train_x), "train_accuracy": correct / len(data.train_x),
            "lr": optimizer.param_groups[0]["lr"]}


def fit(config: TrainConfig, network: Network, data: TrainingData, contract: Contract, *,
        say: Callable[..., None], bar: Any) -> tuple[list[dict], dict[str, Any]]:
    """The epoch loop: train, validate, keep the weights of the lowest validation loss, stop when it stalls."""
    rng = np.random.default_rng(config.seed)
    sampling = cell_weights(data.train, config.label_weights) if config.balanced else \
        np.full(len(data.train), 1 / len(data.train))
    allowed = allowed_mask(data.train, contract.class_names)
    optimizer = torch.optim.AdamW(_param_groups(network.model, config.weight_decay, config.lr, network.frozen,
                                                config.lr * THAWED_LR_SCALE), lr=config.lr)
    steps_per_epoch = math.ceil(len(data.train_x) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(
        step, steps_per_epoch * config.warmup_epochs, steps_per_epoch * config.epochs))
    validation = validation_of(data, contract) if data.validated else None
    history: list[dict] = []
    best: dict[str, Any] = {"loss": math.inf}
    for epoch in range(1, config.epochs + 1):
        if epoch == config.thaw_epoch and network.frozen:
            for module in network.frozen:
                module.requires_grad_(True)  # their batch-norm statistics stay frozen (`_set_train_mode`)
            say(f"epoch {epoch}: the early layers are trained from now on, at {THAWED_LR_SCALE:g} of the rate")
        started = time.perf_counter()
        task = bar.add_task(f"epoch {epoch}/{config.epochs}", total=steps_per_epoch)
        row = {"epoch": epoch} | _epoch(config, network, data, contract, optimizer, scheduler, sampling, allowed,
                                        rng, lambda task=task: bar.advance(task))
        bar.remove_task(task)
        row["seconds"] = time.perf_counter() - started
        if validation is None:  # no selection possible: keep the last (averaged) weights
            history.append(row)
            best = {"loss": math.nan, "epoch": epoch, "report": None, "state": _copy_state(network.kept)}
            say(f"epoch {epoch:>2}  loss {row['train_loss']:.3f}  acc {row['train_accuracy']:.3f}  "
                f"{row['seconds']:3.0f} s", highlight=False)
            continue
        loss, _, figures = validation.judge(network.kept, config.batch_size * 2)
        report = figures.pop("report")
        row |= {"val_loss": loss} | figures
        history.append(row)
        improved = loss < best["loss"]
        if improved:
            best = {"loss": loss, "epoch": epoch, "report": report, "state": _copy_state(network.kept)}
        say(f"epoch {epoch:>2}  loss {row['train_loss']:.3f}/{loss:.3f}  acc {row['train_accuracy']:.3f}/"
            f"{row['val_balanced_accuracy']:.3f}  F1 {report['macro_f1']:.3f}  worst "
            f"{row['val_worst_cell_accuracy']:.2f} ({row['val_worst_cell']})  {row['seconds']:3.0f} s"
            f"{'  best' if improved else ''}", highlight=False)
        if epoch - best["epoch"] >= config.patience:
            say(f"no lower validation loss for {config.patience} epochs: stopping")
            break
    return history, best


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _validation_metrics(data: TrainingData, contract: Contract, top: np.ndarray,
                        probabilities: np.ndarray) -> dict[str, Any]:
    """Per cell, age group, source and view with intervals over patients; the findings; every file's prediction."""
    names = contract.class_names
    called = [names[i] for i in top]
    hits = [c in s.classes for c, s in zip(called, data.val, strict=True)]
    patients = [s.group for s in data.val]
    keys = {"cell": [s.cell for s in data.val], "age": [s.age for s in data.val],
            "source": [s.source for s in data.val], "view": [f"{s.age}/{s.view}" for s in data.val]}
    found = [contract.finding(dict(zip(names, row, strict=True)))[0] for row in probabilities]
    truth = [contract.finding_of(s.classes[0]) for s in data.val]
    return {"groups": {kind: group_hits(hits, called, k, names, patients) for kind, k in keys.items()},
            "findings": finding_report(truth, found, contract.finding_names, patients),
            "val_files": [{"file": s.key, "label": s.label, "source": s.source, "age": s.age, "view": s.view,
                           "patient": s.group, "predicted": c, "finding": f}
                          for s, c, f in zip(data.val, called, found, strict=True)]}


def _provenance(config: TrainConfig, data: TrainingData, weights_source: str) -> dict[str, Any]:
    return {"seed": config.seed, "split_seed": config.split_seed, "val_fraction": config.val_fraction,
            "data_manifest_hash": manifest_hash(data.dataset.samples),
            "data_roots": [r.name for r in data.dataset.roots], "cells": data.dataset.cells(),
            "train_files": len(data.train_x), "val_files": len(data.val_x),
            "train_patients": len({s.group for s in data.train}), "val_patients": len({s.group for s in data.val}),
            "weights_source": weights_source, "package_version": package_version(), "git_commit": git_commit(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "torch_version": str(torch.__version__)}


def populations(samples: Sequence[Sample], class_names: Sequence[str]) -> dict[str, list[str]]:
    """Class -> the age groups whose images named it exactly (a coarse label teaches no subtype to any age)."""
    return {name: sorted({s.age for s in samples if not s.coarse and s.label == name}) for name in class_names}


def write_run(out_dir: Path, config: TrainConfig, contract: Contract, data: TrainingData, network: Network,
              history: list[dict], best: dict[str, Any], reliability: dict[str, Any], seconds: float, *,
              members: list[dict] | None = None) -> None:
    """checkpoint.pt, history.json, metrics.json, curves.png and confusion_matrix.png (`members`: the runs a soup
    averages, each with its seed and kept epoch; a soup has no epochs of its own and no curves)."""
    provenance = _provenance(config, data, network.weights_source) | ({"members": members} if members else {})
    seen = populations(data.train, contract.class_names)
    metrics = {"validation": best["report"], "best_epoch": best["epoch"], "best_val_loss": best["loss"],
               "epochs_run": len(history), "train_seconds": seconds, "counts": data.dataset.counts(),
               "cells": data.dataset.cells(), "populations": seen, "reliability": reliability["figures"],
               "skipped": [{"path": str(p), "reason": r} for p, r in data.skipped],
               "config": dataclasses.asdict(config)}
    if data.validated:
        metrics |= _validation_metrics(data, contract, reliability["val_pred"], reliability["val_probabilities"])
    torch.save({"format": CHECKPOINT_FORMAT, "arch": config.arch, "state_dict": best["state"],
                "contract": contract.to_dict(), "provenance": provenance, "metrics": best["report"],
                "reliability": reliability["parameters"], "populations": seen,
                "config": dataclasses.asdict(config)}, out_dir / CHECKPOINT_NAME)
    (out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics | {"provenance": provenance}, indent=2) + "\n")
    if history:
        plot_curves(history, out_dir / "curves.png", best["epoch"] if data.validated else None)
    if data.validated:
        plot_confusion_matrix(best["report"]["confusion_matrix"], contract.class_names,
                              out_dir / "confusion_matrix.png")


def train(config: TrainConfig, data_dirs: str | Path | Sequence[str | Path], out_dir: str | Path, *,
          console: Any = None, progress: bool = True) -> TrainResult:
    """Train a classifier on one or more class-folder datasets and write every artefact of the run to `out_dir`.

    Args:
        config: the run's settings.
        data_dirs: class-folder datasets (see `cxr_edge.runtime.evaluation.dataset.scan_dataset`); their images
            are pooled, each keeping its source, patient, age group and view.
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
    prepare_out_dir(out_dir)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    say = console.print if console is not None else (lambda *a, **k: None)
    contract = Contract(input_size=(config.image_size, config.image_size), class_names=config.classes,
                        channels=spec.channels, mean=spec.mean, std=spec.std, intensity=config.intensity)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, disable=console is None or not progress, transient=True)
    with bar:
        def decoding(total: int) -> Callable[[], None]:
            task = bar.add_task("decoding images", total=total)
            return lambda: bar.advance(task)

        data = load_data(config, data_dirs, contract, decoding)
        for path, reason in data.skipped:
            say(f"[yellow]skipped[/] {path}: {reason}")
        say(f"{len(data.train_x)} training and {len(data.val_x)} validation images "
            f"({len({s.group for s in data.train})} and {len({s.group for s in data.val})} patients), "
            f"{len(data.skipped)} skipped; {config.arch} at {config.image_size} px, intensity {config.intensity}")
        say("per epoch: loss and accuracy as train/validation (every label-and-source cell weighing the same), "
            "validation macro-F1 and worst cell")
        if config.init_seed is not None:
            torch.manual_seed(config.init_seed)
        network = build_network(config, spec, contract.num_classes)
        if config.init_seed is not None:
            torch.manual_seed(config.seed)  # dropout follows the run's own seed
        history, best = fit(config, network, data, contract, say=say, bar=bar)
    kept = network.kept
    kept.load_state_dict(best["state"])
    kept.eval()
    say("fitting the temperature, the abstention threshold and the gate")
    reliability = fit_reliability(kept, config.arch, contract, data.train_x, data.train,
                                  data.val_x if data.validated else None, data.val if data.validated else None,
                                  seed=config.seed)
    seconds = time.perf_counter() - started
    write_run(out_dir, config, contract, data, network, history, best, reliability, seconds)
    return TrainResult(out_dir, best["epoch"], len(history), best["report"], history, seconds, data.skipped)


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint and check that it is one (format tag, contract)."""
    path = Path(path)
    checkpoint = read_torch_file(path, "cxr-edge checkpoint")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CxrEdgeError(f"{path}: not a cxr-edge checkpoint (expected format {CHECKPOINT_FORMAT})")
    checkpoint["contract"] = Contract.from_dict(checkpoint["contract"])
    return checkpoint
