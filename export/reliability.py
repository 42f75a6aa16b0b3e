"""What a trained model needs to say "I don't know": calibration, abstention and the gate, fitted after training.

- **Temperature** (Guo et al. 2017): one scalar that divides the logits so that a probability of 0.8 is right
  about 80 % of the time on validation images; fitted by minimising their negative log-likelihood. The expected
  calibration error (15 equal-width bins) is reported before and after.
- **Abstention**: below this probability of the top finding (after the temperature; a finding such as pneumonia
  sums its classes) a result is ``uncertain``: the label is kept and flagged. The threshold is the `ABSTAIN_SHARE`
  quantile of the validation images' top-finding probability, so that it flags that share of them, the least
  sure, where errors concentrate; the error rates above and below it are reported.
- **Gate, part 1: how unlike the training images an input is**, as Mahalanobis distances to the nearest class
  (Lee et al. 2018, one covariance shared by the classes, shrunk towards its mean variance) in two places of the
  network (`zoo.ArchSpec.split`):
  * mid-level texture: the mean and standard deviation of every channel of the middle feature map (what an
    image *looks like*: film grain, edges, exposure; a photograph, a CT slice or noise is far away here);
  * the pooled features the classifier reads (what an image *shows*), kept to their `GATE_RANK` main
    directions plus the rest as one shrunk residual, so the graph stays small.
  Each distance is divided by its `GATE_QUANTILE` quantile on the validation images; the score is the larger
  of the two (the second also divided by `FINAL_MARGIN` / `GATE_MARGIN`: on chest films from sources the
  model has not seen, it strays further than the texture does). Inputs scoring above `GATE_MARGIN` are
  rejected: with the sources held out one at a time, that refused 1-4 % of an unseen adult source's films and
  every photograph, synthetic image and non-chest DICOM tried.
- **Gate, part 2: is it upright and positive?** A linear head on the pooled features, trained on the training
  images turned by 0, 90, 180 and 270 degrees and inverted (a negative), says which of the five an input is;
  below `UPRIGHT_MIN` for upright, an input is rejected.

Everything becomes part of the exported graph (`to_onnx`) and its metadata; the runtime never refits anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..runtime.evaluation.calibration import (
    ABSTAIN_SHARE,
    abstention,
    expected_calibration_error,
    finding_confidence,
)
from ..runtime.evaluation.dataset import Sample
from ..runtime.model.contract import Contract
from ..runtime.model.preprocess import to_input
from .labels import allowed_mask, partial_nll
from .zoo import CamClassifier, arch_spec

__all__ = ["fit_reliability", "GateHead", "ORIENTATIONS", "expected_calibration_error", "describe",
           "mid_statistics", "orient", "GATE_RANK", "GATE_QUANTILE", "GATE_MARGIN", "FINAL_MARGIN", "SHRINKAGE",
           "UPRIGHT_MIN", "ABSTAIN_SHARE"]

ORIENTATIONS = ("upright", "rotated_90", "rotated_180", "rotated_270", "inverted")
"""What the orientation head tells apart; everything but ``upright`` is refused."""
GATE_RANK = 64
"""Main directions of the pooled features' within-class scatter kept exactly; the rest count as one residual."""
SHRINKAGE = 0.1
"""How far each covariance is pulled towards its mean variance (a few hundred images for hundreds of values)."""
GATE_QUANTILE = 0.99
GATE_MARGIN = 1.5
"""Rejected above this multiple of the validation images' `GATE_QUANTILE` quantile of the texture distance."""
FINAL_MARGIN = 2.5
"""The same for the distance of the pooled features."""
UPRIGHT_MIN = 0.5
"""Below this probability of ``upright``, an input is refused as rotated or inverted."""
_PARTS = ("mid", "final")


def orient(images: np.ndarray, kind: str) -> np.ndarray:
    """Resized images (N x H x W in [0, 1]) turned or inverted as `kind` (one of `ORIENTATIONS`) says."""
    turns = {"upright": 0, "rotated_90": 1, "rotated_180": 2, "rotated_270": 3}
    if kind == "inverted":
        return np.float32(1.0) - images
    return np.ascontiguousarray(np.rot90(images, k=turns[kind], axes=(1, 2)))


def mid_statistics(mid: torch.Tensor) -> torch.Tensor:
    """Per channel, the mean and the standard deviation over the feature map: N x C x h x w -> N x 2C."""
    mean = mid.mean(dim=(2, 3))
    spread = ((mid * mid).mean(dim=(2, 3)) - mean * mean).clamp(min=0) + 1e-6
    return torch.cat([mean, spread.sqrt()], dim=1)


def describe(model: CamClassifier, arch: str, contract: Contract, images: np.ndarray,
             batch_size: int = 64) -> dict[str, np.ndarray]:
    """``mid`` statistics, ``final`` pooled features and ``logits`` of resized images, as the graph has them."""
    first, second = arch_spec(arch).split(model)
    found: dict[str, list] = {"mid": [], "final": [], "logits": []}
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            mid = first(torch.from_numpy(to_input(images[start:start + batch_size], contract)))
            pooled = second(mid).mean(dim=(2, 3))
            found["mid"].append(mid_statistics(mid).numpy())
            found["final"].append(pooled.numpy())
            found["logits"].append(model.classifier(pooled).numpy())
    return {name: np.concatenate(values) for name, values in found.items()}


class GateHead(nn.Module):
    """The gate in the graph: (mid statistics, pooled features) -> (score, orientation probabilities).

    Per part (``mid``, ``final``) the fitted buffers ``<part>_means`` (K x D), ``<part>_projection`` (D x R: the
    main directions, each divided by the square root of its shrunk variance), ``<part>_basis`` (D x R: the same
    directions, orthonormal), ``<part>_residual`` (the weight of what lies outside them) and ``<part>_scale``;
    then ``orientation_weight`` (O x F) and ``orientation_bias`` (O).

    The distances are computed with one matrix product per part: the input is projected once onto the basis, and
    the class means' projections are computed here, not at every inference; the residual part (only where
    directions were dropped) uses ||x - m||^2 = ||x||^2 - 2 x.m + ||m||^2. That keeps the gate to about 0.1 M
    multiply-adds and a few dozen small operations per image.
    """

    def __init__(self, parameters: dict[str, Any]) -> None:
        super().__init__()
        self.residual_parts: list[str] = []
        for part in _PARTS:
            means, projection, basis = (torch.as_tensor(np.asarray(parameters[f"{part}_{kind}"]), dtype=torch.float64)
                                        for kind in ("means", "projection", "basis"))
            scaling = projection.norm(dim=0)  # basis columns are unit vectors
            self.register_buffer(f"{part}_basis", basis.float())
            self.register_buffer(f"{part}_scaling", scaling.float())
            self.register_buffer(f"{part}_centres", (means @ basis * scaling).float())  # K x R, whitened
            self.register_buffer(f"{part}_scale", torch.as_tensor(float(np.asarray(parameters[f"{part}_scale"]))))
            residual = float(np.asarray(parameters[f"{part}_residual"]))
            if residual > 0:
                self.residual_parts.append(part)
                self.register_buffer(f"{part}_residual", torch.as_tensor(residual))
                self.register_buffer(f"{part}_means_t", means.T.float())  # D x K
                self.register_buffer(f"{part}_means_sq", (means * means).sum(dim=1).float())
                self.register_buffer(f"{part}_inside_centres", (means @ basis).float())
        for name in ("orientation_weight", "orientation_bias"):
            self.register_buffer(name, torch.as_tensor(np.asarray(parameters[name]), dtype=torch.float32))

    def _distance(self, part: str, values: torch.Tensor) -> torch.Tensor:
        inside = values @ getattr(self, f"{part}_basis")  # N x R: the one product
        whitened = (inside * getattr(self, f"{part}_scaling"))[:, None, :] - getattr(self, f"{part}_centres")[None]
        distance = (whitened * whitened).sum(dim=2)  # N x K
        if part in self.residual_parts:
            full = ((values * values).sum(dim=1, keepdim=True) - 2 * (values @ getattr(self, f"{part}_means_t"))
                    + getattr(self, f"{part}_means_sq")[None])
            kept = inside[:, None, :] - getattr(self, f"{part}_inside_centres")[None]
            distance = distance + getattr(self, f"{part}_residual") * (full - (kept * kept).sum(dim=2)).clamp(min=0)
        return distance.min(dim=1).values / getattr(self, f"{part}_scale")

    def forward(self, mid: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score = torch.maximum(self._distance("mid", mid), self._distance("final", pooled))
        orientation = (pooled @ self.orientation_weight.T + self.orientation_bias).softmax(dim=1)
        return score, orientation


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _fit_temperature(logits: np.ndarray, allowed: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the labels (searched on log T); a coarse
    label's likelihood is the summed probability of the classes it allows."""
    logits_t, allowed_t = torch.from_numpy(logits).double(), torch.from_numpy(allowed)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = partial_nll(logits_t / log_t.exp(), allowed_t).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(min(10.0, max(0.1, math.exp(float(log_t.detach())))))


def _part_statistics(values: np.ndarray, labels: np.ndarray, rank: int | None) -> dict[str, np.ndarray]:
    """Label means and the shrunk shared covariance of one part, as whitened main directions plus a residual.

    `labels` index the labels of the training images (classes and coarse labels alike): each is a cluster."""
    present = sorted(set(labels.tolist()))
    means = np.zeros((len(present), values.shape[1]))
    for row, label in enumerate(present):
        means[row] = values[labels == label].mean(axis=0)
    labels = np.searchsorted(present, labels)
    centred = values - means[labels]
    covariance = centred.T @ centred / max(1, len(centred) - len(present))
    floor = SHRINKAGE * np.trace(covariance) / covariance.shape[0]
    eigenvalues, vectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][: rank or len(eigenvalues)]
    kept = (1 - SHRINKAGE) * eigenvalues[order] + floor
    return {"means": means, "basis": vectors[:, order], "projection": vectors[:, order] / np.sqrt(kept),
            "residual": np.float64(0.0 if rank is None else 1.0 / floor), "scale": np.float64(1.0)}


def _orientation_head(features: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (L2, LBFGS) on features of the turned and inverted training images."""
    x = torch.from_numpy(np.concatenate([features[k] for k in ORIENTATIONS])).float()
    y = torch.cat([torch.full((len(features[k]),), i) for i, k in enumerate(ORIENTATIONS)])
    mean, std = x.mean(dim=0), x.std(dim=0) + 1e-6
    torch.manual_seed(seed)
    linear = nn.Linear(x.shape[1], len(ORIENTATIONS))
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=0.5, max_iter=300, line_search_fn="strong_wolfe")
    scaled = (x - mean) / std

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear(scaled), y) + 1e-3 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight = (linear.weight / std).detach().numpy()  # fold the standardisation into the head
    bias = (linear.bias - (linear.weight / std) @ mean).detach().numpy()
    return weight, bias


def _gate(parameters: dict[str, Any], described: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        score, orientation = GateHead(parameters)(torch.from_numpy(described["mid"]).float(),
                                                  torch.from_numpy(described["final"]).float())
    return score.numpy(), orientation.numpy()


def _distances(parameters: dict[str, Any], described: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    head = GateHead(parameters)
    with torch.inference_mode():
        return {part: head._distance(part, torch.from_numpy(described[part]).float()).numpy() for part in _PARTS}


def fit_reliability(model: CamClassifier, arch: str, contract: Contract, train_x: np.ndarray,
                    train: Sequence[Sample], val_x: np.ndarray | None, val: Sequence[Sample] | None, *,
                    seed: int = 0) -> dict[str, Any]:
    """Fit temperature, abstention threshold and gate for a trained model.

    Args:
        model: the trained network (eval mode).
        arch: its architecture's name (where the gate cuts the network).
        contract: its preprocessing contract.
        train_x, train: resized training images and their samples (class means, scatter, orientation head).
        val_x, val: resized validation images and their samples (temperature and thresholds); without them the
            training images stand in and the figures say so.
        seed: for the orientation head's initialisation.

    Returns:
        ``parameters`` (what the exported graph and metadata carry), ``figures`` (for the metrics and the model
        card) and ``val_pred`` (validation predictions after the temperature).
    """
    label_space = sorted({s.label for s in train})
    train_y = np.asarray([label_space.index(s.label) for s in train])
    fitted_on = "validation images" if val_x is not None and len(val_x) else "training images (no validation)"
    if val_x is None or not len(val_x):
        val_x, val = train_x, train
    allowed = allowed_mask(val, contract.class_names)
    described_train = describe(model, arch, contract, train_x)
    described_val = describe(model, arch, contract, val_x)

    temperature = _fit_temperature(described_val["logits"], allowed)
    before, after = _softmax(described_val["logits"]), _softmax(described_val["logits"] / temperature)
    hits = allowed[np.arange(len(after)), after.argmax(axis=1)]
    abstain, abstained = abstention(finding_confidence(after, contract), hits)

    parameters: dict[str, Any] = {}
    for part, rank in (("mid", None), ("final", GATE_RANK)):
        parameters |= {f"{part}_{k}": v for k, v in _part_statistics(described_train[part], train_y, rank).items()}
    turned = {kind: describe(model, arch, contract, orient(train_x, kind))["final"] if kind != "upright"
              else described_train["final"] for kind in ORIENTATIONS}
    parameters["orientation_weight"], parameters["orientation_bias"] = _orientation_head(turned, seed)
    quantiles = {part: float(np.quantile(d, GATE_QUANTILE)) for part, d in _distances(parameters,
                                                                                      described_val).items()}
    parameters["mid_scale"] = np.float64(quantiles["mid"])
    parameters["final_scale"] = np.float64(quantiles["final"] * FINAL_MARGIN / GATE_MARGIN)

    val_score, val_orientation = _gate(parameters, described_val)
    refused = (val_score > GATE_MARGIN) | (val_orientation[:, 0] < UPRIGHT_MIN)
    altered = {}
    for kind in ORIENTATIONS[1:]:
        score, orientation = _gate(parameters, describe(model, arch, contract, orient(val_x, kind)))
        altered[kind] = float(np.mean((score > GATE_MARGIN) | (orientation[:, 0] < UPRIGHT_MIN)))
    exact = np.asarray([not s.coarse for s in val])
    val_y = np.asarray([contract.class_names.index(s.classes[0]) for s in val])
    figures = {
        "fitted_on": fitted_on, "images": len(val), "temperature": temperature,
        "ece_before": expected_calibration_error(before[exact], val_y[exact]),
        "ece_after": expected_calibration_error(after[exact], val_y[exact]), **abstained,
        "gate_threshold": GATE_MARGIN, "gate_quantiles": quantiles,
        "gate_refused_share": float(refused.mean()),
        "orientation_upright_share": float(np.mean(val_orientation.argmax(axis=1) == 0)),
        "refused_when_altered": altered,
    }
    policy = {"temperature": temperature, "abstain_below": abstain, "gate_threshold": GATE_MARGIN,
              "upright_min": UPRIGHT_MIN, "orientations": list(ORIENTATIONS), "fitted_on": fitted_on,
              "validation_images": len(val), "abstain_on": "finding"}
    gate = {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in parameters.items()}  # torch.load-safe
    return {"parameters": {"gate": gate, "policy": policy}, "figures": figures, "val_pred": after.argmax(axis=1),
            "val_probabilities": after, "val_scores": val_score}
