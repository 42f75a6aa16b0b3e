"""Classify chest X-rays with a contract-carrying model on ONNX Runtime or OpenVINO.

    classifier = Classifier.open("model.onnx")           # backend chosen and reported
    for p in classifier.predict(["a.png", "b.dcm"]):
        print(p.path, p.label, p.probabilities, p.error)

Preprocessing comes only from the model's own contract. A file that cannot be read becomes a `Prediction` with
`error` set; the others are still classified.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .backends import Backend, check_io, open_backend, resolve_backend
from .contract import Contract
from .errors import ContractError, ImageError
from .model_file import CAM, resolve_model
from .preprocess import load_for_contract, preprocess, stack

__all__ = ["Classifier", "Prediction", "Prepared", "DISPLAY_MAX_SIDE"]

DISPLAY_MAX_SIDE = 1024
"""Images kept for heatmap overlays are shrunk to this, so that memory does not grow with detector size."""


@dataclass
class Prepared:
    """One input after decoding and preprocessing (or the reason it failed), waiting for inference."""

    path: str
    input: np.ndarray | None = None
    error: str | None = None
    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    warnings: tuple[str, ...] = ()
    patient: dict[str, str] | None = None
    display: np.ndarray | None = None


@dataclass
class Prediction:
    """The result for one input.

    Attributes:
        path: the input as given.
        label: predicted class name, or None when the input failed.
        probabilities: class name -> probability, or None when the input failed.
        latency_ms: decode, preprocess, inference (this image's share of its batch) and total, in milliseconds.
        error: why the input could not be classified, or None.
        warnings: doubts that did not stop classification (wrong modality, raw detector data).
        cam: the predicted class's activation map (h x w, model resolution), when asked for.
        patient: DICOM patient name and ID; printed only when a user asks.
        display: the grayscale image (shrunk) for drawing the activation map, when asked for.
    """

    path: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    warnings: tuple[str, ...] = ()
    cam: np.ndarray | None = field(default=None, repr=False)
    patient: dict[str, str] | None = None
    display: np.ndarray | None = field(default=None, repr=False)

    @property
    def confidence(self) -> float | None:
        return None if self.probabilities is None else self.probabilities[self.label]

    def to_record(self) -> dict:
        """The JSON record of one prediction, exactly the documented keys."""
        return {"path": self.path, "label": self.label, "probabilities": self.probabilities,
                "latency_ms": self.latency_ms, "error": self.error}


class Classifier:
    """A model, its contract and the engine running it.

    Use `Classifier.open`; the constructor takes already-opened parts.
    """

    def __init__(self, backend: Backend, contract: Contract, backend_reason: str) -> None:
        self.backend = backend
        self.contract = contract
        self.backend_reason = backend_reason

    @classmethod
    def open(cls, path: str | Path | None = None, backend: str = "auto", threads: int | None = None,
             mode: str = "latency") -> Classifier:
        """Open a model and check its contract.

        Args:
            path: ``.onnx`` or OpenVINO ``.xml``; None for the shipped INT8 model.
            backend: ``auto`` or a name in ``ENGINES``; see `resolve_backend` for what ``auto`` decides.
            threads: inference threads (default: every core).
            mode: ``latency`` for single images, ``throughput`` for folders.

        Raises:
            ModelError: the file is missing, not a model, or disagrees with its contract.
            ContractError: the model carries no contract this runtime understands.
        """
        model_path = resolve_model(path)
        name, reason = resolve_backend(model_path, backend, threads=threads)
        engine = open_backend(model_path, name, threads=threads, mode=mode)
        try:
            contract = Contract.from_metadata(engine.io.metadata)
        except ContractError as exc:
            raise ContractError(f"{model_path}: {exc}") from exc
        check_io(model_path, engine.io, contract)
        return cls(engine, contract, reason)

    @property
    def path(self) -> Path:
        return self.backend.path

    @property
    def metadata(self) -> dict[str, str]:
        return self.backend.io.metadata

    @property
    def has_cam(self) -> bool:
        return CAM in self.backend.io.outputs

    def prepare(self, item: str | Path | np.ndarray, *, keep_display: bool = False,
                name: str | None = None) -> Prepared:
        """Decode and preprocess one input; never raises for a bad file (the error is recorded instead).

        Args:
            item: a file path, or a canonical grayscale image (2-D float32 in [0, 1]).
            keep_display: keep a shrunk copy of the image for heatmap overlays.
            name: how to call the input in results (default: the path, or ``array[i]``).
        """
        label = name or (str(item) if not isinstance(item, np.ndarray) else "array")
        start = time.perf_counter()
        if isinstance(item, np.ndarray):
            pixels, warnings, patient = np.asarray(item, np.float32), (), None
        else:
            try:
                loaded = load_for_contract(item, self.contract)
            except ImageError as exc:
                return Prepared(label, error=exc.reason, decode_ms=_ms(start))
            pixels, warnings, patient = loaded.pixels, loaded.warnings, loaded.patient
        decoded = time.perf_counter()
        tensor = preprocess(pixels, self.contract)
        display = _shrink(pixels) if keep_display else None
        return Prepared(label, tensor, None, (decoded - start) * 1000, _ms(decoded), warnings, patient, display)

    def infer(self, prepared: Sequence[Prepared], *, cam: bool = False) -> list[Prediction]:
        """Run one batch of prepared inputs (failed ones pass through as errors), keeping their order."""
        ready = [p for p in prepared if p.input is not None]
        probabilities: np.ndarray = np.zeros((0, self.contract.num_classes), np.float32)
        maps = None
        per_image_ms = 0.0
        if ready:
            start = time.perf_counter()
            probabilities, maps = self.backend.run(stack([p.input for p in ready]), cam=cam)
            per_image_ms = _ms(start) / len(ready)
        results, index = [], 0
        for item in prepared:
            latency = {"decode": round(item.decode_ms, 3), "preprocess": round(item.preprocess_ms, 3)}
            if item.input is None:
                latency |= {"inference": 0.0, "total": round(item.decode_ms + item.preprocess_ms, 3)}
                results.append(Prediction(item.path, latency_ms=latency, error=item.error, warnings=item.warnings))
                continue
            row = probabilities[index]
            best = int(np.argmax(row))
            latency |= {"inference": round(per_image_ms, 3),
                        "total": round(item.decode_ms + item.preprocess_ms + per_image_ms, 3)}
            results.append(Prediction(
                item.path, self.contract.class_names[best],
                {name: float(p) for name, p in zip(self.contract.class_names, row, strict=True)}, latency, None,
                item.warnings, maps[index, best] if maps is not None else None, item.patient, item.display))
            index += 1
        return results

    def predict(self, items: Iterable[str | Path | np.ndarray], *, cam: bool = False,
                batch_size: int = 1) -> list[Prediction]:
        """Classify files or arrays in order, sequentially (see `cxr_edge.runtime.pipeline` for folders)."""
        return list(self.predict_iter(items, cam=cam, batch_size=batch_size))

    def predict_iter(self, items: Iterable[str | Path | np.ndarray], *, cam: bool = False,
                     batch_size: int = 1) -> Iterator[Prediction]:
        batch: list[Prepared] = []
        for i, item in enumerate(items):
            batch.append(self.prepare(item, keep_display=cam, name=f"array[{i}]" if isinstance(item, np.ndarray)
                                      else None))
            if sum(p.input is not None for p in batch) >= batch_size:
                yield from self.infer(batch, cam=cam)
                batch = []
        if batch:
            yield from self.infer(batch, cam=cam)

    def describe(self) -> dict:
        """What is running, for reports: model, backend and why, engine settings, contract."""
        return {"model": str(self.path), "backend": self.backend.name, "backend_reason": self.backend_reason,
                "settings": self.backend.settings, "contract": self.contract.to_dict()}


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _shrink(pixels: np.ndarray) -> np.ndarray:
    scale = DISPLAY_MAX_SIDE / max(pixels.shape)
    if scale >= 1:
        return pixels
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
