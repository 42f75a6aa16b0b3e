"""Classify chest X-rays with a contract-carrying model on ONNX Runtime or OpenVINO.

    classifier = Classifier.open("model.onnx")           # backend chosen and reported
    for p in classifier.predict(["a.png", "b.dcm"]):
        print(p.path, p.label, p.probabilities, p.error)

Preprocessing comes only from the model's own contract. A file that cannot be read becomes a `Prediction` with
`error` set; the others are still classified.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ContractError, ImageError, InferenceError, ModelError
from ..reading.header import HeaderFacts
from ..reading.images import warm_up
from .backends import Backend, check_io, open_backend, resolve_backend
from .contract import Contract
from .facts import device_facts, image_facts, model_facts
from .gate import GATE_MODES, GatePolicy, judge
from .model_file import CAM, FEATURES, GATE_SCORE, ORIENTATION, PROBABILITIES, resolve_model
from .preprocess import load_for_contract, resize, stack, to_input

__all__ = ["Classifier", "Prediction", "Prepared", "DISPLAY_MAX_SIDE", "rescale"]

DISPLAY_MAX_SIDE = 1024
"""Images kept for heatmap overlays are shrunk to this, so that memory does not grow with detector size."""
WARM_AFTER_IDLE_S = 0.5
"""An engine idle this long gets a throw-away inference when an image arrives (`Classifier.warm`)."""
PROBABILITY_SUM_TOLERANCE = 0.02
"""How far from 1 the probabilities of one image may sum before the output counts as broken."""


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
    header: HeaderFacts | None = None
    image: dict[str, Any] | None = None


@dataclass
class Prediction:
    """The result for one input.

    Attributes:
        path: the input as given.
        label: predicted class name; None when the input failed or was rejected.
        probabilities: class name -> probability (after the model's temperature), or None when the input failed.
        latency_ms: decode, preprocess, inference (this image's share of its batch) and total, in milliseconds.
        error: why the input could not be classified, or None.
        status: ``classified``, ``uncertain``, ``rejected`` or ``failed`` (see `cxr_edge.runtime.model.gate`).
        finding: the most probable finding (a class, or a group such as pneumonia that sums its classes), None
            when the input failed or was rejected; `finding_probability` its probability.
        gate: the gate's score and threshold, or None for a model without a gate (or with ``--gate off``).
        warnings: doubts that did not stop classification (wrong modality, raw detector data, near the gate), and
            for a rejected input, why.
        cam: the top class's activation map (h x w, model resolution), when asked for.
        patient: DICOM patient name and ID; printed only when a user asks.
        display: the grayscale image (shrunk) for drawing the activation map, when asked for.
        flagged: the gate objected to the input (rejected, or with ``--gate warn`` kept with a warning).
        monitor: what monitoring reads (`cxr_edge.runtime.model.facts`): image, model and device facts.
        positive: for a multi-label model, the findings at or above their operating points, most probable first
            (None for a four-class model, or when the input failed or was rejected).
    """

    path: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    status: str = "failed"
    gate: dict[str, float] | None = None
    warnings: tuple[str, ...] = ()
    cam: np.ndarray | None = field(default=None, repr=False)
    patient: dict[str, str] | None = None
    display: np.ndarray | None = field(default=None, repr=False)
    finding: str | None = None
    finding_probability: float | None = None
    flagged: bool = False
    monitor: dict[str, Any] | None = None
    positive: tuple[str, ...] | None = None

    @property
    def top(self) -> str | None:
        """The most probable class, whatever the status (a rejected input has no label but still a top class)."""
        return None if self.probabilities is None else max(self.probabilities, key=self.probabilities.get)

    @property
    def confidence(self) -> float | None:
        return None if self.probabilities is None else self.probabilities[self.top]

    def to_record(self) -> dict:
        """The JSON record of one prediction, exactly the documented keys (a multi-label model's records add
        ``positive``, the findings at or above their operating points)."""
        record = {"path": self.path, "label": self.label, "finding": self.finding,
                  "finding_probability": self.finding_probability, "probabilities": self.probabilities,
                  "latency_ms": self.latency_ms, "error": self.error, "status": self.status, "gate": self.gate,
                  "warnings": list(self.warnings), "monitor": self.monitor}
        return record if self.positive is None else record | {"positive": list(self.positive)}


class Classifier:
    """A model, its contract and the engine running it.

    Use `Classifier.open`; the constructor takes already-opened parts.
    """

    def __init__(self, backend: Backend, contract: Contract, backend_reason: str, policy: GatePolicy | None = None,
                 gate: str = "reject") -> None:
        self.backend = backend
        self.contract = contract
        self.backend_reason = backend_reason
        self.policy = policy
        self.gate = gate
        present = set(backend.io.outputs)
        self.outputs = tuple(name for name in (PROBABILITIES, GATE_SCORE, ORIENTATION, FEATURES) if name in present)
        """What every inference asks the engine for (the activation maps only when wanted): the gate's outputs and
        the pooled features feed monitoring even with the gate off."""
        self._engine_lock = threading.Lock()  # an engine's request object is not safe to share between threads
        self._last_run = time.monotonic()

    @classmethod
    def open(cls, path: str | Path | None = None, backend: str = "auto", threads: int | None = None,
             mode: str = "latency", gate: str = "reject", **remote: Any) -> Classifier:
        """Open a model and check its contract.

        Args:
            path: ``.onnx`` or OpenVINO ``.xml``; None for the shipped INT8 model.
            backend: ``auto`` or a name in ``ENGINES``; see `resolve_backend` for what ``auto`` decides.
            threads: inference threads (default: every core).
            mode: ``latency`` for single images, ``throughput`` for folders.
            gate: ``reject`` (default), ``warn`` or ``off``; see `cxr_edge.runtime.model.gate`.
            remote: with ``backend="kserve"``: ``server`` (the inference server's URL; the model file then supplies
                the contract the server's model is checked against), ``model_name`` (the server's name for the
                model), ``token_file`` (a bearer token) and ``server_ca`` (the CA its HTTPS certificate is checked
                against).

        Raises:
            ModelError: the file is missing, not a model, or disagrees with its contract.
            ContractError: the model carries no contract this runtime understands.
        """
        model_path = resolve_model(path)
        warm_up()
        name, reason = resolve_backend(model_path, backend, threads=threads)
        engine = open_backend(model_path, name, threads=threads, mode=mode, **remote)
        try:
            contract = Contract.from_metadata(engine.io.metadata)
        except ContractError as exc:
            raise ContractError(f"{model_path}: {exc}") from exc
        check_io(model_path, engine.io, contract)
        if gate not in GATE_MODES:
            raise ModelError(f"unknown gate mode {gate!r}; choose one of {', '.join(GATE_MODES)}")
        try:
            policy = GatePolicy.from_metadata(engine.io.metadata)
        except ContractError as exc:
            raise ContractError(f"{model_path}: {exc}") from exc
        classifier = cls(engine, contract, reason, policy, gate)
        classifier.probe()
        return classifier

    def probe(self) -> None:
        """Refuse, once and naming the file, a model whose output is not a set of probabilities: one blank image
        must give finite, non-negative values summing to 1 (a damaged file gives NaN or infinities; a model that
        ends in raw logits gives neither a sum of 1 nor a range of [0, 1]). It also warms the engine."""
        blank = np.zeros((1, self.contract.channels, *self.contract.input_size), np.float32)
        try:
            row = self.run(blank)[PROBABILITIES][0]
        except InferenceError as exc:
            raise ModelError(f"{self.path}: the model does not run on a blank image: {exc}") from exc
        if not _valid(row, self.contract):
            raise ModelError(f"{self.path}: the model's output on a blank image is not a set of probabilities "
                             f"({np.array2string(row, precision=3)}); the file is damaged, or its last layer is "
                             f"not a {self.contract.outputs}")

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
        fmt, stored = None, None
        if isinstance(item, np.ndarray):
            pixels, warnings, patient, header = np.asarray(item, np.float32), (), None, None
        else:
            try:
                loaded = load_for_contract(item, self.contract)
            except ImageError as exc:
                return Prepared(label, error=exc.reason, decode_ms=_ms(start))
            pixels, warnings, patient, header = loaded.pixels, loaded.warnings, loaded.patient, loaded.header
            fmt, stored = loaded.format, loaded.stored
        decoded = time.perf_counter()
        resized = resize(pixels, self.contract)
        tensor = to_input(resized, self.contract)
        image = image_facts(resized, stored[:2] if stored else pixels.shape[:2], stored[2] if stored else None)
        display = _shrink(_display_pixels(item, pixels, fmt)) if keep_display else None
        return Prepared(label, tensor, None, (decoded - start) * 1000, _ms(decoded), warnings, patient, display,
                        header, image)

    def run(self, batch: np.ndarray, *, cam: bool = False) -> dict[str, np.ndarray]:
        """The model's outputs for a preprocessed batch: probabilities, the gate's outputs, and maps if asked.

        Safe to call from several threads: they take turns on the engine.
        """
        names = self.outputs + ((CAM,) if cam and self.has_cam else ())
        with self._engine_lock:
            outputs = self.backend.run(batch, names)
            self._last_run = time.monotonic()
        return outputs

    def warm(self, idle_s: float = WARM_AFTER_IDLE_S) -> threading.Thread | None:
        """Wake the engine for an image that is on its way, if it has been idle for `idle_s` or longer.

        After a second or two without work the engine's threads sleep and its weights leave the CPU caches, and
        the next inference is markedly slower (`benchmarks/live/warm.md`). The live modes call this when an image
        arrives: one throw-away inference runs on a zero image in the background while the image itself is
        hashed, stored and decoded, so that the real inference finds the engine awake. Under a steady stream the
        engine is never idle and nothing extra runs.

        Returns:
            The thread running the throw-away inference, or None when the engine was busy recently.
        """
        if time.monotonic() - self._last_run < idle_s or getattr(self.backend, "remote", False):
            return None  # a server keeps its own engine warm
        zeros = np.zeros((1, self.contract.channels, *self.contract.input_size), np.float32)
        thread = threading.Thread(target=self.run, args=(zeros,), name="cxr-warm", daemon=True)
        thread.start()
        return thread

    def infer(self, prepared: Sequence[Prepared], *, cam: bool = False) -> list[Prediction]:
        """Run one batch of prepared inputs (failed ones pass through as errors), keeping their order."""
        ready = [p for p in prepared if p.input is not None]
        outputs: dict[str, np.ndarray] = {}
        per_image_ms = 0.0
        if ready:
            start = time.perf_counter()
            try:
                outputs = self.run(stack([p.input for p in ready]), cam=cam)
            except InferenceError as exc:  # a server gone: these images fail, the run goes on
                failed = [replace(p, input=None, error=f"inference failed: {exc}") for p in ready]
                prepared = [failed.pop(0) if p.input is not None else p for p in prepared]
                ready = []
            per_image_ms = _ms(start) / len(ready) if ready else 0.0
        results, index = [], 0
        for item in prepared:
            latency = {"decode": round(item.decode_ms, 3), "preprocess": round(item.preprocess_ms, 3)}
            if item.input is None:
                latency |= {"inference": 0.0, "total": round(item.decode_ms + item.preprocess_ms, 3)}
                results.append(Prediction(item.path, latency_ms=latency, error=item.error, warnings=item.warnings))
                continue
            latency |= {"inference": round(per_image_ms, 3),
                        "total": round(item.decode_ms + item.preprocess_ms + per_image_ms, 3)}
            results.append(self._verdict(item, outputs, index, latency))
            index += 1
        return results

    def _verdict(self, item: Prepared, outputs: dict[str, np.ndarray], index: int,
                 latency: dict[str, float]) -> Prediction:
        row = outputs[PROBABILITIES][index]
        if not _valid(row, self.contract):
            return Prediction(item.path, latency_ms=latency, warnings=item.warnings,
                              error=f"the model produced no valid probabilities ({np.array2string(row, precision=3)});"
                                    " the model file may be damaged")
        if self.policy is not None and self.policy.site_scale != 1.0 and not self.contract.multi_label:
            row = rescale(row, self.policy.site_scale)
        probabilities = {name: float(p) for name, p in zip(self.contract.class_names, row, strict=True)}
        finding = self.contract.finding(probabilities)
        verdict = judge(probabilities, policy=self.policy, mode=self.gate,
                        gate_score=float(outputs[GATE_SCORE][index]) if GATE_SCORE in outputs else None,
                        orientation=outputs[ORIENTATION][index] if ORIENTATION in outputs else None,
                        header=item.header, warnings=item.warnings, finding=finding,
                        finding_of={name: self.contract.finding_of(name) for name in probabilities})
        maps = outputs.get(CAM)
        shown = finding if verdict.label is not None else (None, None)
        picked = {name: outputs[name][index] if name in outputs else None for name in (GATE_SCORE, ORIENTATION,
                                                                                       FEATURES)}
        monitor = {"image": item.image, "model": model_facts(picked[GATE_SCORE], picked[ORIENTATION],
                                                             picked[FEATURES]), "device": device_facts(item.header)}
        return Prediction(item.path, verdict.label, probabilities, latency, None, verdict.status, verdict.gate,
                          verdict.warnings, maps[index, int(np.argmax(row))] if maps is not None else None,
                          item.patient, item.display, shown[0], None if shown[1] is None else round(shown[1], 6),
                          verdict.flagged, monitor,
                          self.contract.positives(probabilities) if self.contract.multi_label and verdict.label
                          is not None else None)

    def predict(self, items: Iterable[str | Path | np.ndarray], *, cam: bool = False,
                batch_size: int = 1) -> list[Prediction]:
        """Classify files or arrays in order, sequentially (see `cxr_edge.runtime.model.stream` for folders)."""
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
                "settings": self.backend.settings, "contract": self.contract.to_dict(), "gate": self.gate,
                "policy": None if self.policy is None else asdict(self.policy)}


def rescale(probabilities: np.ndarray, scale: float) -> np.ndarray:
    """Probabilities under a second temperature: softmax(scale x log p), row by row (a site's refitted
    calibration; `GatePolicy.site_scale`)."""
    logits = np.log(np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)) * scale
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def _valid(row: np.ndarray, contract: Contract) -> bool:
    """A softmax row is a distribution; a sigmoid row holds finite probabilities in [0, 1]."""
    if contract.multi_label:
        return bool(np.isfinite(row).all() and row.min() >= 0 and row.max() <= 1)
    return _is_distribution(row)


def _is_distribution(row: np.ndarray) -> bool:
    """Finite, non-negative, summing to 1 (a softmax that is itself quantised, in uint8 steps of 1/255, sums to 1
    within a few steps: `PROBABILITY_SUM_TOLERANCE`)."""
    return bool(np.isfinite(row).all() and row.min() >= 0 and abs(float(row.sum()) - 1.0) < PROBABILITY_SUM_TOLERANCE)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000




def _display_pixels(item: str | Path | np.ndarray, pixels: np.ndarray, fmt: str | None) -> np.ndarray:
    """The image a heatmap is drawn over: the film at up to `DISPLAY_MAX_SIDE` pixels. The model's decode stops at
    the input size (JPEG's DCT scales, JPEG 2000's levels, the early block mean of every other format); a picture a
    person looks at needs more, so the file is decoded a second time, at display size, only when a heatmap is asked
    for. The model's input is never taken from this decode: it must be the pixels training saw."""
    if isinstance(item, np.ndarray) or fmt is None or max(pixels.shape) >= DISPLAY_MAX_SIDE:
        return pixels
    from ..reading.images import read_image

    try:
        larger = read_image(item, min_size=(DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE)).pixels
    except ImageError:
        return pixels
    return larger if max(larger.shape) > max(pixels.shape) else pixels


def _shrink(pixels: np.ndarray) -> np.ndarray:
    scale = DISPLAY_MAX_SIDE / max(pixels.shape)
    if scale >= 1:
        return pixels
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
