"""The small interface every inference engine implements, and the checks shared by all of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ...errors import ModelError
from ..contract import Contract
from ..model_file import PROBABILITIES

__all__ = ["Backend", "ModelIO", "check_io", "MODES"]

MODES = ("latency", "throughput")
"""``latency``: one image at a time as fast as possible; ``throughput``: many images, best images per second."""


@dataclass(frozen=True)
class ModelIO:
    """What a model file declares: input shape (None for dynamic axes), output names, their shapes (None where
    the graph does not say) and its metadata."""

    input_shape: tuple[int | None, ...]
    outputs: tuple[str, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    output_shapes: dict[str, tuple[int | None, ...] | None] = field(default_factory=dict)


class Backend(Protocol):
    """An opened model on one engine. Adding an engine is one module that provides this.

    Attributes:
        name: its key in `cxr_edge.runtime.model.model_file.ENGINES`.
        path: the model file.
        io: declared input shape, outputs and metadata.
        settings: what was configured (threads, hints, cache), for reports.
    """

    name: str
    path: Path
    io: ModelIO
    settings: dict

    def run(self, batch: np.ndarray, outputs: Sequence[str] = (PROBABILITIES,)) -> dict[str, np.ndarray]:
        """The named outputs (each of the model's own, see `io.outputs`) of one preprocessed batch, by name.

        The arrays belong to the caller: an engine that reuses its output buffers returns copies.
        """
        ...


def check_io(path: Path, io: ModelIO, contract: Contract) -> None:
    """Refuse a model whose inputs or outputs disagree with its own contract (a wrong or hand-edited model)."""
    if PROBABILITIES not in io.outputs:
        raise ModelError(f"{path}: the model has no {PROBABILITIES!r} output (outputs: {', '.join(io.outputs)})")
    if len(io.input_shape) != 4:
        raise ModelError(f"{path}: the model input must be N x C x H x W, got rank {len(io.input_shape)}")
    expected = (contract.channels, *contract.input_size)
    declared = io.input_shape[1:]
    if any(d is not None and d != e for d, e in zip(declared, expected, strict=True)):
        raise ModelError(f"{path}: the model input is {declared} but its contract says {expected}")
    shape = io.output_shapes.get(PROBABILITIES)
    classes = shape[-1] if shape else None
    if classes is not None and classes != len(contract.class_names):
        raise ModelError(f"{path}: the model outputs {classes} class probabilities but its contract names "
                         f"{len(contract.class_names)} classes ({', '.join(contract.class_names)})")
