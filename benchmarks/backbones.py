"""A faster INT8 backbone? The study behind keeping EfficientNet-Lite0.

Usage: python benchmarks/backbones.py --teacher runs/release/training/checkpoint.pt [--data DIR ...]
       [--arch mobilenetv4_conv_small] [--epochs 40] [--out benchmarks/backbones]

timm's `mobilenetv4_conv_small` and `mobileone_s0` run INT8 in about half of Lite0's time, but ImageNet weights
for them exist only on the Hugging Face hub, which this machine cannot reach, and no PyPI package ships them
(searched: mobilenetv4, mobilenetv4-pytorch, mobilenet-v4, timm-mobilenetv4, mobileone (code only, no weights),
mobilenetv2/3-pytorch-model). What remains is distillation: the student starts from random weights and learns
from the release's labels and from the shipped Lite0's softened probabilities (Hinton et al. 2015), with the
release recipe's split, balanced sampling, augmentation and contract. It is judged on the same held-out patients
as Lite0, per class-source-age cell with bootstrap intervals; the student would replace Lite0 only if no cell is
worse beyond its interval.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from cxr_edge.export.data import load_resized, stratified_split
from cxr_edge.export.labels import allowed_mask, partial_nll
from cxr_edge.export.to_onnx import model_from_checkpoint
from cxr_edge.export.train import augment, cell_weights, load_checkpoint
from cxr_edge.export.zoo import CamClassifier
from cxr_edge.runtime.evaluation.bench import machine_info, versions
from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset
from cxr_edge.runtime.evaluation.metrics import group_hits
from cxr_edge.runtime.model.preprocess import to_input

TEMPERATURE = 4.0
"""Distillation temperature: softens the teacher's probabilities so that its second choices teach too."""


def student(arch: str, classes: int) -> CamClassifier:
    backbone = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="", in_chans=1)
    with torch.inference_mode():
        features = backbone(torch.zeros(1, 1, 64, 64)).shape[1]
    return CamClassifier(backbone, features, classes, drop_rate=0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--arch", default="mobilenetv4_conv_small")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "backbones")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    checkpoint = load_checkpoint(args.teacher)
    contract, config = checkpoint["contract"], checkpoint["config"]
    teacher = model_from_checkpoint(checkpoint)
    dataset = scan_dataset(resolve_data_dirs(args.data))
    train_part, val_part = stratified_split(dataset.samples, config["val_fraction"], config["split_seed"])
    train_x, train_kept, _ = load_resized(train_part, contract)
    val_x, val_kept, _ = load_resized(val_part, contract)
    train_y = torch.from_numpy(allowed_mask(train_kept, contract.class_names))
    model = student(args.arch, contract.num_classes).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = args.epochs * (len(train_x) // 32 + 1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    weights = cell_weights(train_kept)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = rng.choice(len(train_x), size=len(train_x), replace=True, p=weights)
        for start in range(0, len(order), 32):
            index = order[start:start + 32]
            if len(index) < 2:
                continue
            inputs = torch.from_numpy(to_input(augment(train_x[index], rng), contract))
            with torch.no_grad():
                soft = (teacher(inputs) / TEMPERATURE).softmax(dim=1)
            logits = model(inputs)
            distilled = nn.functional.kl_div((logits / TEMPERATURE).log_softmax(dim=1), soft,
                                             reduction="batchmean") * TEMPERATURE**2
            loss = 0.5 * distilled + 0.5 * partial_nll(logits, train_y[index], 0.1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        print(f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.3f}", flush=True)
    model.eval()
    with torch.inference_mode():
        inputs = torch.from_numpy(to_input(val_x, contract))
        predicted = {"student": model(inputs).argmax(dim=1).numpy(), "teacher": teacher(inputs).argmax(dim=1).numpy()}
    names, patients = contract.class_names, [s.group for s in val_kept]
    reports = {name: group_hits([names[i] in s.classes for i, s in zip(pred, val_kept, strict=True)],
                                [names[i] for i in pred], [s.cell for s in val_kept], names, patients)
               for name, pred in predicted.items()}
    worse = [cell for cell, row in reports["student"].items() if row["ci95"][1] < reports["teacher"][cell]["accuracy"]]
    record = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_info(),
              "versions": versions(), "arch": args.arch, "epochs": args.epochs,
              "train_minutes": (time.perf_counter() - started) / 60, "cells": reports,
              "worse_beyond_interval": worse, "adopt": not worse}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.arch}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# {args.arch} distilled from the shipped Lite0", "", f"Measured {record['created']} on "
             f"{record['machine']['cpu']}: `python benchmarks/backbones.py --teacher ... --arch {args.arch} --epochs "
             f"{args.epochs}` ({record['train_minutes']:.0f} min). No ImageNet weights are installable here (see the "
             "script's docstring); the student starts from random weights.", "",
             "| class / source / age | images | Lite0 (teacher) right | student right (95 % interval) |",
             "| --- | --- | --- | --- |"]
    for cell, row in reports["student"].items():
        low, high = row["ci95"]
        lines.append(f"| {cell} | {row['images']} | {reports['teacher'][cell]['accuracy']:.2f} | "
                     f"{row['accuracy']:.2f} ({low:.2f}-{high:.2f}) |")
    verdict = ("no cell worse beyond its interval: a candidate" if not worse else
               f"worse beyond its interval in {len(worse)} cells ({', '.join(worse)}): Lite0 stays the default")
    lines += ["", f"Verdict: {verdict}."]
    (args.out / f"{args.arch}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
