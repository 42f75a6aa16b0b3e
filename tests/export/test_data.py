from pathlib import Path

import pytest

from cxr_edge.export.data import load_resized, manifest_hash, stratified_split
from cxr_edge.runtime.contract import Contract
from cxr_edge.runtime.dataset import CLASS_NAMES, DatasetError, Sample, scan_dataset


def test_split_is_stratified_seeded_and_order_independent():
    samples = [Sample(Path(f"{c}/{i}.png"), c) for c in range(4) for i in range(10 + 5 * c)]
    train, val = stratified_split(samples, 0.2, seed=7)
    assert sorted(train + val, key=str) == sorted(samples, key=str)
    assert [sum(s.label == c for s in val) for c in range(4)] == [2, 3, 4, 5]
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
        images, labels, failed = load_resized(dataset.samples, contract)
    finally:
        broken.unlink()
    assert images.shape == (24, 32, 32) and len(labels) == 24
    assert [(p.name, "not an image" in r) for p, r in failed] == [("zz-broken.png", True)]


def test_manifest_hash_names_files_labels_and_contents(small_dataset):
    dataset = scan_dataset(small_dataset)
    first = manifest_hash(dataset.samples, dataset.root)
    assert first == manifest_hash(list(reversed(dataset.samples)), dataset.root)
    relabelled = [Sample(s.path, (s.label + 1) % 4) for s in dataset.samples]
    assert manifest_hash(relabelled, dataset.root) != first
    assert manifest_hash(dataset.samples[1:], dataset.root) != first
