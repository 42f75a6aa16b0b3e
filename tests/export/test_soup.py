"""A soup of tiny real runs: the shipped weights are the members' mean, and only runs of one recipe are averaged."""

from __future__ import annotations

import json

import pytest
import torch

from cxr_edge.export.config import TrainConfig
from cxr_edge.export.soup import average_runs
from cxr_edge.export.train import CHECKPOINT_NAME, load_checkpoint, train
from cxr_edge.runtime.errors import CxrEdgeError

pytestmark = pytest.mark.slow  # trains real networks

TINY = dict(arch="simple_cnn", epochs=2, batch_size=8, image_size=32, val_fraction=0.25, threads=2, init_seed=0)


@pytest.fixture(scope="module")
def members(small_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    for seed in (0, 1):
        train(TrainConfig(seed=seed, **TINY), small_dataset, root / f"seed-{seed}")
    return [root / "seed-0", root / "seed-1"]


def test_the_soup_is_the_mean_of_its_members_and_a_run_of_its_own(members, small_dataset, tmp_path):
    figures = average_runs(members, [small_dataset], tmp_path / "soup")
    states = [load_checkpoint(run / CHECKPOINT_NAME)["state_dict"] for run in members]
    soup = load_checkpoint(tmp_path / "soup" / CHECKPOINT_NAME)
    for name, value in soup["state_dict"].items():
        if value.is_floating_point():  # float32 mean of two: within one rounding of the exact mean
            expected = (states[0][name] + states[1][name]) / 2
            assert torch.allclose(value, expected, rtol=0, atol=float(expected.abs().max()) * 2e-7 + 1e-12), name
    assert any(not torch.equal(states[0][name], states[1][name]) for name in states[0])  # the seeds differ
    metrics = json.loads((tmp_path / "soup" / "metrics.json").read_text())
    assert [m["seed"] for m in metrics["provenance"]["members"]] == [0, 1]
    assert metrics["val_files"] and "temperature" in soup["reliability"]["policy"]
    assert 0 <= figures["val_balanced_accuracy"] <= 1


def test_runs_of_different_recipes_are_refused_and_nothing_is_written(members, small_dataset, tmp_path):
    other = tmp_path / "other"
    train(TrainConfig(seed=2, **TINY | {"split_seed": 5}), small_dataset, other)
    with pytest.raises(CxrEdgeError, match="not the same recipe.*split_seed"):
        average_runs([members[0], other], [small_dataset], tmp_path / "soup")
    assert not (tmp_path / "soup" / CHECKPOINT_NAME).exists()
