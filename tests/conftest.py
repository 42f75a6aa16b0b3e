"""Shared fixtures: the labelled data folder (never committed) and small copies of it for quick runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared training images: $CXR_DATA, else ../shared/datasets/cxr4 beside the checkout.

    Missing data fails the tests that need it rather than skipping them: a skipped check proves nothing.
    """
    path = Path(os.environ.get("CXR_DATA") or REPO.parent / "shared" / "datasets" / "cxr4")
    assert path.is_dir(), f"labelled data not found at {path}; set CXR_DATA"
    return path


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
