"""A uniform model soup: the weights of several runs of one recipe, differing only by seed, averaged into one.

On this data the same recipe moves a validation cell by 0.1-0.2 from one seed to the next, more than recipes
differ from each other (`benchmarks/training/recipes.md`). Averaging the weights of runs that start from the same
ImageNet weights and keep the same frozen stages keeps one network's cost and removes much of that chance (Wortsman
et al., "Model soups", 2022). Batch-norm statistics are averaged with the weights; the frozen stages' are the same
in every member. The soup is then judged and calibrated exactly like one run (`fit_reliability`, `write_run`), so
export, quantisation and every report read it like any checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..runtime.errors import CxrEdgeError
from .config import TrainConfig
from .reliability import fit_reliability
from .train import Network, load_checkpoint, load_data, prepare_out_dir, validation_of, write_run
from .zoo import build_model

__all__ = ["average_runs", "average_states"]

SAME_RECIPE_EXCEPT = ("seed", "threads")
"""Settings the members may differ in; anything else (data, split, recipe) would make the average meaningless."""


def average_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of floating-point tensors; integer buffers (batch-norm step counters) taken from the first."""
    first = states[0]
    if any(state.keys() != first.keys() for state in states):
        raise CxrEdgeError("the runs to average have different layers")
    return {name: (torch.stack([s[name] for s in states]).mean(dim=0) if value.is_floating_point() else value)
            for name, value in first.items()}


def shared_recipe(runs: Sequence[Path], checkpoints: Sequence[dict]) -> TrainConfig:
    """The members' one recipe (refused if they differ in anything but the seed)."""
    configs = [dict(c["config"]) for c in checkpoints]
    for run, config in zip(runs[1:], configs[1:], strict=True):
        differing = sorted(k for k in config if k not in SAME_RECIPE_EXCEPT and config[k] != configs[0].get(k))
        if differing:
            raise CxrEdgeError(f"{run}: not the same recipe as {runs[0]} ({', '.join(differing)} differ)")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in configs[0].items() if k in names})


def _member(run: Path, checkpoint: dict) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    return {"run": run.name, "seed": checkpoint["config"]["seed"], "best_epoch": metrics.get("best_epoch"),
            "epochs_run": metrics.get("epochs_run"), "best_val_loss": metrics.get("best_val_loss")}


def average_runs(runs: Sequence[Path], data_dirs: Sequence[Path], out_dir: Path, *, console: Any = None) -> dict:
    """Average the kept weights of `runs` (each a `cxr-edge train` folder), judge and calibrate the soup on their
    split, and write it to `out_dir` as a run of its own. Returns the soup's validation figures."""
    started = time.perf_counter()
    say = console.print if console is not None else (lambda *a, **k: None)
    runs = [Path(run) for run in runs]
    checkpoints = [load_checkpoint(run / "checkpoint.pt") for run in runs]
    config, contract = shared_recipe(runs, checkpoints), checkpoints[0]["contract"]
    prepare_out_dir(Path(out_dir))
    model, _ = build_model(config.arch, contract.num_classes, pretrained=False)
    model.load_state_dict(average_states([c["state_dict"] for c in checkpoints]))
    model.eval()
    data = load_data(config, data_dirs, contract)
    loss, _, figures = validation_of(data, contract).judge(model, config.batch_size * 2)
    say(f"soup of {len(runs)} runs: validation loss {loss:.3f}, balanced accuracy "
        f"{figures['val_balanced_accuracy']:.3f}, worst cell {figures['val_worst_cell_accuracy']:.2f} "
        f"({figures['val_worst_cell']})", highlight=False)
    reliability = fit_reliability(model, config.arch, contract, data.train_x, data.train, data.val_x, data.val,
                                  seed=config.seed)
    best = {"loss": loss, "epoch": None, "report": figures.pop("report"), "state": model.state_dict()}
    network = Network(model, [], None, checkpoints[0]["provenance"].get("weights_source", "unknown"))
    write_run(Path(out_dir), config, contract, data, network, [], best, reliability, time.perf_counter() - started,
              members=[_member(run, c) for run, c in zip(runs, checkpoints, strict=True)])
    return figures
