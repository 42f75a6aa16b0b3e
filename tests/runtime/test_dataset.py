"""Class-folder datasets: folder names to classes, what is listed and skipped, and where the data is found."""

from pathlib import Path

import pytest

from cxr_edge.runtime.evaluation.dataset import DatasetError, resolve_data_dirs, scan_dataset
from cxr_edge.runtime.model.classes import DEFAULT_CLASSES, resolve_label


@pytest.mark.parametrize(
    "folder, expected",
    [
        ("normal", "normal"), ("Normal", "normal"), ("healthy", "normal"), ("NORMAL ", "normal"),
        ("covid", "covid19"), ("COVID-19", "covid19"), ("Covid 19", "covid19"), ("covid19", "covid19"),
        ("pneumonia_bac", "bacterial_pneumonia"), ("Bacterial Pneumonia", "bacterial_pneumonia"),
        ("pneumonia_vir", "viral_pneumonia"), ("Viral-Pneumonia", "viral_pneumonia"),
        ("0", "covid19"), ("1", "normal"), ("2", "viral_pneumonia"), ("3", "bacterial_pneumonia"),
        ("tuberculosis", None), ("4", None),
    ],
)
def test_folder_aliases(folder, expected):
    assert resolve_label(folder, DEFAULT_CLASSES) == (None if expected is None else (expected, (expected,)))


def test_a_coarse_label_allows_the_classes_it_stands_for_where_the_model_has_them():
    both = ("bacterial_pneumonia", "viral_pneumonia")
    for folder in ("pneumonia", "Pneumonia", "PNEUMONIA type unknown"):
        assert resolve_label(folder, DEFAULT_CLASSES) == ("pneumonia", both)
    assert resolve_label("pneumonia", ("normal", "covid19", "bacterial_pneumonia")) is None
    assert resolve_label("pneumonia", ("normal", "pneumonia")) == ("pneumonia", ("pneumonia",))  # a class of its own
    assert resolve_label("Effusion", ("normal", "effusion")) == ("effusion", ("effusion",))  # the model's own names


def _tree(root: Path, layout: dict[str, list[str]]) -> Path:
    for folder, names in layout.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).write_bytes(b"x")
    return root


def test_numbered_seed_folders_map_to_canonical_classes(tmp_path):
    dataset = scan_dataset(_tree(tmp_path, {"0": ["a.png"], "1": ["b.png"], "2": ["c.png"], "3": ["d.png"]}))
    by_name = {s.path.name: s.label for s in dataset.samples}
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
    assert dataset.counts() == {"normal": 80, "covid19": 73, "bacterial_pneumonia": 80, "viral_pneumonia": 80}
    assert sorted(p.name for p, _ in dataset.skipped) == [  # the three lateral views of the COVID-19 folder
        "covid-19-pneumonia-14-L.png", "covid-19-pneumonia-15-L.jpg", "covid-19-pneumonia-7-L.jpg"]


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA", str(tmp_path))
    assert resolve_data_dirs(None) == [tmp_path]
    assert resolve_data_dirs(tmp_path / "..") == [tmp_path / ".."]
    monkeypatch.setenv("CXR_DATA", str(tmp_path / "absent"))
    with pytest.raises(DatasetError, match=r"absent \(from \$CXR_DATA\) does not exist"):
        resolve_data_dirs(None)
    monkeypatch.delenv("CXR_DATA")
    with pytest.raises(DatasetError, match=r"^no labelled data given: pass --data DIR or set CXR_DATA$"):
        resolve_data_dirs(None)  # no folder is guessed


def test_several_roots_keep_each_image_source_patient_and_age(tmp_path):
    """A manifest's columns, a ``source__`` prefix and the public collections' naming conventions, in that order."""
    kids = _tree(tmp_path / "kids", {"normal": ["IM-0115-0001.jpeg", "NORMAL2-IM-1371-0001.jpeg"],
                                      "pneumonia_bac": ["person12_bacteria_46.jpeg", "person12_bacteria_47.jpeg"],
                                      "covid19": ["ryct.2020200034.fig5-day0.jpeg", "ryct.2020200034.fig5-day4.jpeg",
                                                  "covid-19-pneumonia-7-PA.jpg", "covid-19-pneumonia-7-L.jpg"]})
    adults = _tree(tmp_path / "adults", {"normal": ["rsna__Normal-1.png", "site__x.png"],
                                         "covid19": ["hannover__a1.png", "hannover__b2.png"]})
    (adults / "MANIFEST.tsv").write_text(
        "class\tsource\tpatient\tage\tview\tfile\n"
        "normal\trsna-nih\tRDB-1\tadult (adult hospital)\tPA\tnormal/rsna__Normal-1.png\n"
        "covid19\thannover-mhh\tMHH-7\tadult (age redacted)\tAP\tcovid19/hannover__a1.png\n"
        "covid19\thannover-mhh\tMHH-7\tadult (age redacted)\tLL\tcovid19/hannover__b2.png\n")
    dataset = scan_dataset([kids, adults])
    described = {s.path.name: (s.source, s.patient, s.age) for s in dataset.samples}
    assert described == {
        "IM-0115-0001.jpeg": ("kermany", "IM-0115", "child"),
        "NORMAL2-IM-1371-0001.jpeg": ("kermany", "NORMAL2-IM-1371", "child"),
        "person12_bacteria_46.jpeg": ("kermany", "person12", "child"),
        "person12_bacteria_47.jpeg": ("kermany", "person12", "child"),
        "ryct.2020200034.fig5-day0.jpeg": ("ieee8023-covid", "ryct.2020200034.fig5", "adult"),
        "ryct.2020200034.fig5-day4.jpeg": ("ieee8023-covid", "ryct.2020200034.fig5", "adult"),
        "covid-19-pneumonia-7-PA.jpg": ("ieee8023-covid", "covid-19-pneumonia-7", "adult"),
        "rsna__Normal-1.png": ("rsna-nih", "RDB-1", "adult"),
        "site__x.png": ("site", None, "unknown"),
        "hannover__a1.png": ("hannover-mhh", "MHH-7", "adult"),
    }
    assert sorted((p.name, reason.split(" (")[0]) for p, reason in dataset.skipped) == [
        ("covid-19-pneumonia-7-L.jpg", "lateral view"), ("hannover__b2.png", "lateral view")]
    keys = {s.key for s in dataset.samples}
    assert "kids/normal/IM-0115-0001.jpeg" in keys and "adults/normal/rsna__Normal-1.png" in keys
    assert dataset.cells()["covid19/hannover-mhh/adult"] == 1 and dataset.roots == [kids, adults]


def test_the_shared_roots_together(data_dirs):
    assert len(data_dirs) == 3, "CXR_DATA should name the four-class set, the adult set and the NIH set"
    dataset = scan_dataset(data_dirs)
    assert dataset.cells() == {"bacterial_pneumonia/kermany/child": 80, "covid19/hannover-mhh/adult": 93,
                               "covid19/ieee8023-covid/adult": 73, "normal/kermany/child": 80,
                               "normal/rsna-nih/adult": 300, "viral_pneumonia/kermany/child": 80,
                               "normal/nih-cxr14/adult": 311, "pneumonia/nih-cxr14/adult": 289}
    assert len({s.group for s in dataset.samples if s.source == "hannover-mhh"}) == 40  # serial films grouped
    coarse = [s for s in dataset.samples if s.coarse]
    assert len(coarse) == 289 and {s.classes for s in coarse} == {("bacterial_pneumonia", "viral_pneumonia")}
    assert {s.view for s in coarse} == {"PA", "AP"} and {s.age for s in coarse} == {"adult"}  # numbers of years


def test_a_coarse_folder_numeric_ages_and_views(tmp_path):
    """A ``pneumonia`` folder allows both pneumonia classes; manifest ages in years decide the age group."""
    root = _tree(tmp_path / "site", {"Pneumonia": ["p1_a.png", "p1_b.png", "p2.png"], "normal": ["n1.png"]})
    (root / "MANIFEST.tsv").write_text(
        "class\tsource\tpatient\tage\tsex\tview\tfile\n"
        "pneumonia\tsite\tP1\t17\tF\tAP\tPneumonia/p1_a.png\n"
        "pneumonia\tsite\tP1\t18\tF\tPA\tPneumonia/p1_b.png\n"
        "pneumonia\tsite\tP2\t71.5\tM\tsomething\tPneumonia/p2.png\n"
        "normal\tsite\tN1\tunknown\tM\tPA\tnormal/n1.png\n")
    dataset = scan_dataset(root)
    described = {s.path.name: (s.label, s.classes, s.age, s.view) for s in dataset.samples}
    both = ("bacterial_pneumonia", "viral_pneumonia")
    assert described == {"p1_a.png": ("pneumonia", both, "child", "AP"), "p1_b.png": ("pneumonia", both, "adult", "PA"),
                         "p2.png": ("pneumonia", both, "adult", "unknown"),
                         "n1.png": ("normal", ("normal",), "unknown", "PA")}
    assert dataset.counts() == {"normal": 1, "covid19": 0, "bacterial_pneumonia": 0, "viral_pneumonia": 0,
                                "pneumonia": 3}
    with pytest.raises(DatasetError, match="unknown class folders: Pneumonia"):  # a model without both classes
        scan_dataset(root, ("normal", "covid19", "bacterial_pneumonia"))


def test_several_roots_from_the_setting(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("CXR_DATA", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert resolve_data_dirs(None) == [tmp_path / "a", tmp_path / "b"]
    assert resolve_data_dirs([tmp_path / "b"]) == [tmp_path / "b"]  # --data wins over the setting
