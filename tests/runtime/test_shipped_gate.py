"""The shipped model's gate on real inputs: it refuses what is not a chest film and passes chest films."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.data import astronaut, chelsea, coffee

from cxr_edge.runtime.evaluation.dataset import scan_dataset
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.reading.images import load_image


@pytest.fixture(scope="module")
def shipped() -> Classifier:
    classifier = Classifier.open(None, backend="ort")  # the shipped INT8 model
    assert classifier.policy is not None and classifier.policy.gate_threshold is not None, "shipped without a gate"
    return classifier


def _gray(image: np.ndarray) -> np.ndarray:
    return (image.mean(axis=2) / 255.0).astype(np.float32)


def test_photos_and_noise_are_rejected(shipped):
    rng = np.random.default_rng(0)
    inputs = {"cat": _gray(chelsea()), "astronaut": _gray(astronaut()), "coffee": _gray(coffee()),
              "uniform noise": rng.random((400, 400), dtype=np.float32),
              "gaussian noise": np.clip(rng.normal(0.5, 0.2, (400, 400)), 0, 1).astype(np.float32)}
    results = shipped.predict(list(inputs.values()))
    assert {name: r.status for name, r in zip(inputs, results, strict=True)} == dict.fromkeys(inputs, "rejected")
    assert all(r.label is None and r.warnings[0].startswith("rejected: ") for r in results)


def test_chest_films_pass_and_turned_or_inverted_films_do_not(shipped, data_dirs):
    samples = scan_dataset(data_dirs).samples
    films = [load_image(s.path) for s in samples[::40]]  # every source, children and adults
    upright = shipped.predict(films)
    passed = [r.status in ("classified", "uncertain") for r in upright]
    assert np.mean(passed) >= 0.9, [r.warnings for r in upright if r.status == "rejected"]
    assert all(r.gate is not None and r.gate["threshold"] == shipped.policy.gate_threshold for r in upright)
    for name, turn in (("rotated 90", lambda f: np.rot90(f)), ("upside down", lambda f: np.rot90(f, 2)),
                       ("negative", lambda f: 1.0 - f)):
        altered = shipped.predict([np.ascontiguousarray(turn(f)) for f in films])
        rejected = np.mean([r.status == "rejected" for r in altered])
        assert rejected >= 0.8, (name, rejected)


def test_the_shipped_model_abstains_on_the_finding_it_was_fitted_on(shipped, data_dirs):
    """The threshold was fitted on the top finding's probability (pneumonia sums its two classes): a film is
    uncertain exactly when that probability, not the top class's, is below it."""
    policy = shipped.policy
    assert policy.abstain_on == "finding" and 1 / 3 < policy.abstain_below < 1
    films = [load_image(s.path) for s in scan_dataset(data_dirs).samples[::10]]
    judged = [r for r in shipped.predict(films) if r.status != "rejected"]
    assert judged
    for result in judged:
        record = result.to_record()
        assert (record["status"] == "uncertain") == (record["finding_probability"] < policy.abstain_below), record
