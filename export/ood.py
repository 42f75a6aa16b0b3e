"""Inputs that are not frontal chest radiographs, built from what installed packages ship, to measure the gate.

Nothing is downloaded and nothing is stored in the repository: every set is made at run time.
- ``photos``: the photographs, micrographs and textures that scikit-image ships (a cat, a rocket, coins, a retina,
  bricks, ...), and the two that scikit-learn ships;
- ``synthetic``: noise of several kinds, smooth random fields (which look like blurry X-rays to a careless eye),
  gradients, stripes, checkerboards and random shapes, seeded;
- ``dicom``: the non-chest DICOM images pydicom ships as test data (CT, MR, ultrasound, nuclear medicine,
  cervical-spine radiographs), once as DICOM files (their headers count) and once as pixels alone;
- ``altered``: real chest films turned by 90, 180 and 270 degrees and inverted (negatives).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..runtime.model.classifier import Classifier
from ..runtime.reading.images import read_image
from .reliability import ORIENTATIONS, orient

__all__ = ["photos", "synthetic", "dicom_files", "dicom_pixels", "altered", "rejection_rates"]

_SKIMAGE = ("astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock",
            "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
            "logo", "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text")


def _gray(image: np.ndarray) -> np.ndarray:
    """Any image array to the loader's canonical form: 2-D float32 in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3].astype(np.float32), cv2.COLOR_RGB2GRAY)
    image = image.astype(np.float32)
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def photos() -> dict[str, np.ndarray]:
    """Natural photographs, micrographs and textures shipped by scikit-image and scikit-learn."""
    import skimage.data

    found = {}
    for name in _SKIMAGE:
        try:
            found[name] = _gray(getattr(skimage.data, name)())
        except Exception:  # a data file this installation lacks (some need a download): not part of the set
            continue
    try:
        from sklearn.datasets import load_sample_images

        for name, image in zip(("china", "flower"), load_sample_images().images, strict=True):
            found[name] = _gray(image)
    except ImportError:
        pass
    return found


def synthetic(count: int = 40, size: int = 320, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded images of no anatomy at all, several of each kind."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    makers = {
        "uniform-noise": lambda: rng.random((size, size)),
        "gaussian-noise": lambda: np.clip(rng.normal(0.5, 0.2, (size, size)), 0, 1),
        "smooth-field": lambda: cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0),
                                                 rng.uniform(8, 40)),
        "gradient": lambda: (np.cos(rng.uniform(0, np.pi)) * x + np.sin(rng.uniform(0, np.pi)) * y),
        "stripes": lambda: 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 30) * (x if rng.random() < 0.5 else y)),
        "checkerboard": lambda: ((np.floor(x * (n := rng.integers(2, 16))) + np.floor(y * n)) % 2),
        "shapes": lambda: _shapes(rng, size),
        "salt-and-pepper": lambda: (rng.random((size, size)) < rng.uniform(0.05, 0.5)).astype(np.float32),
    }
    found = {}
    for i in range(count):
        kind = list(makers)[i % len(makers)]
        found[f"{kind}-{i}"] = _gray(makers[kind]())
    return found


def _shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    canvas = np.full((size, size), rng.uniform(0, 0.3), np.float32)
    for _ in range(int(rng.integers(3, 12))):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        value = float(rng.uniform(0.3, 1))
        if rng.random() < 0.5:
            cv2.circle(canvas, centre, int(rng.integers(5, size // 4)), value, -1)
        else:
            corner = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.rectangle(canvas, centre, corner, value, -1)
    return canvas


def dicom_files() -> list[Path]:
    """pydicom's test images that decode here, one per distinct picture (the same picture in several transfer
    syntaxes or from several encoders counts once)."""
    from pydicom.data import get_testdata_files

    found, seen = [], set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(get_testdata_files()):
            path = Path(name)
            try:
                pixels = read_image(path).pixels
                if min(pixels.shape) < 32:
                    continue
                key = np.round(cv2.resize(pixels, (8, 8), interpolation=cv2.INTER_AREA), 1).tobytes()
                if key in seen:
                    continue
            except Exception:  # not an image, or not one the loader reads: not part of the set
                continue
            seen.add(key)
            found.append(path)
    return found


def dicom_pixels(files: Sequence[Path]) -> dict[str, np.ndarray]:
    """The same DICOM images as pixels alone (as an export to PNG would give them): the gate without headers."""
    return {path.name: read_image(path).pixels for path in files}


def altered(films: dict[str, np.ndarray], size: int = 320) -> dict[str, dict[str, np.ndarray]]:
    """Real chest films turned and inverted, by alteration (each film shrunk to `size` first, for speed)."""
    small = {}
    for name, film in films.items():
        scale = size / max(film.shape)
        small[name] = cv2.resize(film, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else film
    return {kind: {name: orient(film[None], kind)[0] for name, film in small.items()} for kind in ORIENTATIONS[1:]}


def rejection_rates(classifier: Classifier, sets: dict[str, dict[str, np.ndarray] | Sequence[Path]]) -> dict:
    """Per set: inputs, the share rejected, and what the rest were called (the gate's mistakes, by name)."""
    rates = {}
    for name, items in sets.items():
        inputs = list(items.values()) if isinstance(items, dict) else list(items)
        names = list(items) if isinstance(items, dict) else [Path(p).name for p in items]
        results = classifier.predict(inputs)
        statuses = [r.status for r in results]
        rates[name] = {"images": len(results), "rejected": float(np.mean([s == "rejected" for s in statuses])),
                       "failed": int(sum(s == "failed" for s in statuses)),
                       "passed": sorted(n for n, r in zip(names, results, strict=True)
                                        if r.status in ("classified", "uncertain"))}
    return rates
