from pathlib import Path

import pytest

from cxr_edge.export.data import load_resized, manifest_hash, stratified_split
from cxr_edge.runtime.evaluation.dataset import DatasetError, Sample, scan_dataset
from cxr_edge.runtime.model.classes import DEFAULT_CLASSES as CLASS_NAMES
from cxr_edge.runtime.model.contract import Contract


def test_split_is_stratified_seeded_and_order_independent():
    samples = [Sample(Path(f"{c}/{i}.png"), CLASS_NAMES[c]) for c in range(4) for i in range(10 + 5 * c)]
    train, val = stratified_split(samples, 0.2, seed=7)
    assert sorted(train + val, key=str) == sorted(samples, key=str)
    assert [sum(s.label == c for s in val) for c in CLASS_NAMES] == [2, 3, 4, 5]
    assert (train, val) == stratified_split(list(reversed(samples)), 0.2, seed=7)
    assert val != stratified_split(samples, 0.2, seed=8)[1]
    with pytest.raises(DatasetError):
        stratified_split(samples, 1.0, seed=0)


def test_unreadable_files_are_counted_with_reasons(small_dataset, tmp_path):
    broken = small_dataset / "covid19" / "zz-broken.png"
    broken.write_text("not an image")
    try:
        dataset = scan_dataset(small_dataset)
        contract = Contract(input_size=(32, 32), class_names=CLASS_NAMES, channels=1, mean=(0.5,), std=(0.5,))
        images, kept, failed = load_resized(dataset.samples, contract)
    finally:
        broken.unlink()
    assert images.shape == (24, 32, 32) and len(kept) == 24 and broken not in [s.path for s in kept]
    assert [(p.name, "not an image" in r) for p, r in failed] == [("zz-broken.png", True)]


def test_manifest_hash_names_files_labels_and_contents(small_dataset):
    dataset = scan_dataset(small_dataset)
    first = manifest_hash(dataset.samples)
    assert first == manifest_hash(list(reversed(dataset.samples)))
    relabelled = [Sample(s.path, CLASS_NAMES[(CLASS_NAMES.index(s.label) + 1) % 4], root=s.root)
                  for s in dataset.samples]
    assert manifest_hash(relabelled) != first
    assert manifest_hash(dataset.samples[1:]) != first


def test_split_keeps_every_patient_on_one_side_and_every_cell_in_validation(data_dirs):
    dataset = scan_dataset(data_dirs)
    for seed in (0, 1, 2):
        train, val = stratified_split(dataset.samples, 0.2, seed)
        assert {s.group for s in train}.isdisjoint({s.group for s in val})
        assert len(train) + len(val) == len(dataset.samples)
        cells = {(s.label, s.source) for s in dataset.samples}
        for cell in cells:
            total = sum((s.label, s.source) == cell for s in dataset.samples)
            held = sum((s.label, s.source) == cell for s in val)
            assert 0.1 * total <= held <= 0.3 * total + 1, (cell, held, total)  # near 20 %, whole patients
    assert stratified_split(list(reversed(dataset.samples)), 0.2, 0) == stratified_split(dataset.samples, 0.2, 0)


def test_a_patient_with_many_films_is_never_split(tmp_path):
    samples = [Sample(tmp_path / f"p{p}_{i}.png", "normal", (), "site", f"p{p}")
               for p in range(10) for i in range(1 + 9 * (p == 3))]
    train, val = stratified_split(samples, 0.2, 0)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    assert 2 <= len(val) <= 4  # the ten-film patient would have overshot 20 % of 19 films
