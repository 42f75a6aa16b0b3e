"""Shared fixtures: a private runtime cache per test, a tiny model, the labelled data folder (never committed)
and small copies of it for quick runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.factories import tiny_onnx

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own runtime cache, so that one test's remembered engine choice or compiled graph can
    neither help nor hide a problem in another."""
    monkeypatch.setenv("CXR_EDGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    """A tiny real CAM network (64 px, four classes) that follows the model contract."""
    return tiny_onnx(tmp_path / "tiny.onnx", size=64)


@pytest.fixture(scope="session")
def data_dirs() -> list[Path]:
    """The labelled training images, from the ``$CXR_DATA`` setting: the four-class set first, then the adult set and
    the NIH set (`make test` sets it to the three shared sets).

    Missing data fails the tests that need it rather than skipping them: a skipped check proves nothing.
    """
    setting = os.environ.get("CXR_DATA")
    assert setting, ("set CXR_DATA to the labelled images (make test sets it to "
                     "../shared/datasets/cxr4:../shared/datasets/cxr-adult:../shared/datasets/cxr-nih)")
    paths = [Path(p) for p in setting.split(os.pathsep) if p]
    for path in paths:
        assert path.is_dir(), f"labelled data not found at {path} (from $CXR_DATA)"
    return paths


@pytest.fixture(scope="session")
def data_dir(data_dirs: list[Path]) -> Path:
    """The four-class set (children's normal and pneumonia films, adults' COVID-19 films)."""
    return data_dirs[0]


@pytest.fixture(scope="session")
def small_dataset(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six images per class copied from the shared data, with the shared layout's class folder names."""
    root = tmp_path_factory.mktemp("small") / "data"
    for folder in sorted((data_dir / "train").iterdir()):
        target = root / folder.name
        target.mkdir(parents=True)
        for image in sorted(folder.iterdir())[:6]:
            shutil.copy(image, target / image.name)
    return root
