"""Class-folder datasets: folder names to classes, what is listed and skipped, and where the data is found."""

from pathlib import Path

import pytest

from cxr_edge.runtime.dataset import CLASS_NAMES, DatasetError, resolve_class, resolve_data_dir, scan_dataset


@pytest.mark.parametrize(
    "folder, expected",
    [
        ("normal", "normal"), ("Normal", "normal"), ("healthy", "normal"), ("NORMAL ", "normal"),
        ("covid", "covid19"), ("COVID-19", "covid19"), ("Covid 19", "covid19"), ("covid19", "covid19"),
        ("pneumonia_bac", "bacterial_pneumonia"), ("Bacterial Pneumonia", "bacterial_pneumonia"),
        ("pneumonia_vir", "viral_pneumonia"), ("Viral-Pneumonia", "viral_pneumonia"),
        ("0", "covid19"), ("1", "normal"), ("2", "viral_pneumonia"), ("3", "bacterial_pneumonia"),
        ("tuberculosis", None), ("4", None), ("pneumonia", None),
    ],
)
def test_folder_aliases(folder, expected):
    assert resolve_class(folder) == expected


def _tree(root: Path, layout: dict[str, list[str]]) -> Path:
    for folder, names in layout.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).write_bytes(b"x")
    return root


def test_numbered_seed_folders_map_to_canonical_classes(tmp_path):
    dataset = scan_dataset(_tree(tmp_path, {"0": ["a.png"], "1": ["b.png"], "2": ["c.png"], "3": ["d.png"]}))
    by_name = {s.path.name: CLASS_NAMES[s.label] for s in dataset.samples}
    assert by_name == {"a.png": "covid19", "b.png": "normal", "c.png": "viral_pneumonia",
                       "d.png": "bacterial_pneumonia"}


def test_unknown_folders_are_listed_in_the_error(tmp_path):
    _tree(tmp_path, {"Normal": ["a.png"], "tuberculosis": ["b.png"], "misc": ["c.png"]})
    with pytest.raises(DatasetError, match="unknown class folders: misc, tuberculosis"):
        scan_dataset(tmp_path)


def test_non_images_are_listed_as_skipped_not_dropped(tmp_path):
    dataset = scan_dataset(_tree(tmp_path, {"COVID-19": ["a.jpeg", "notes.txt"], "Normal": ["b.PNG", "README"]}))
    assert sorted(s.path.name for s in dataset.samples) == ["a.jpeg", "b.PNG"]
    assert sorted((p.name, "not an image file type" in r) for p, r in dataset.skipped) == [("README", True),
                                                                                          ("notes.txt", True)]


def test_shared_layout_with_train_folder(data_dir):
    dataset = scan_dataset(data_dir)
    assert dataset.counts() == {"normal": 80, "covid19": 76, "bacterial_pneumonia": 80, "viral_pneumonia": 80}
    assert dataset.skipped == []


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir(tmp_path / "..") == tmp_path / ".."
    monkeypatch.setenv("CXR_DATA", str(tmp_path / "absent"))
    with pytest.raises(DatasetError, match=r"absent \(from \$CXR_DATA\) does not exist"):
        resolve_data_dir(None)
    monkeypatch.delenv("CXR_DATA")
    with pytest.raises(DatasetError, match=r"^no labelled data given: pass --data DIR or set CXR_DATA$"):
        resolve_data_dir(None)  # no folder is guessed
