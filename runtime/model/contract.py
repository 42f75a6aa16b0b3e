"""The contract: the one definition of how an image becomes a model input and what the outputs mean.

Training stores it in the checkpoint, export writes it into the ONNX metadata, quantisation keeps it and the
runtime reads it back. Nothing else in cxr-edge defines input size, resampling, normalisation, channels, class
names, their display names and codes, or the findings reported above the classes, so the edge can never
preprocess differently from training and every report names the classes the model itself names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ContractError
from .classes import FINDING_GROUPS, KNOWN_CLASSES, Code, Finding, private_code
from .model_file import CONTRACT_KEY, VERSION_KEY

__all__ = ["Contract", "Finding", "FORMAT_VERSION", "RESAMPLING", "FITS", "INTENSITIES", "OUTPUT_KINDS",
           "DEFAULT_OPERATING_POINT",
           "READ_TOLERANCE"]

FORMAT_VERSION = 3
"""Version of the contract's layout; a runtime refuses a model whose contract is newer than it understands.
Version 2 added `Contract.intensity`; version 3 the classes' display names and codes and the findings. Older
contracts read as ``intensity="none"``, and their classes (cxr-edge's four, the only ones those versions made) get
the vocabulary's names and codes (`cxr_edge.runtime.model.classes`)."""

OUTPUT_KINDS = ("softmax", "sigmoid")
"""What the probabilities output holds: ``softmax``, one distribution over the classes (one of them is the
answer); ``sigmoid``, an independent probability per finding (any number may be present), each made positive by
its own operating point."""

DEFAULT_OPERATING_POINT = 0.5
"""A sigmoid finding's operating point when none was fitted on validation films."""

READ_TOLERANCE = 0.01
"""How far a faster read of a file may move the image the network sees: the mean absolute difference, in grey
levels of [0, 1], between the image from the faster read and from the full-size read, both resized to the input
size by the contract's resampling (before intensity standardisation). Decoding at a lower resolution (JPEG DCT
scaling, JPEG 2000 levels) and reducing before the value mapping (`reading.shrink`) are kept only within it.
Measured on real films with the shipped model's probabilities beside it (``benchmarks/decode/reduced.md``): the
largest film's difference lies well inside it, and the median change of a probability is below the INT8 model's
own change against FP32."""

RESAMPLING = ("area", "linear", "cubic", "lanczos", "nearest")
"""Names of OpenCV interpolation modes a contract may ask for."""

FITS = ("stretch", "pad")
"""How an image of another aspect ratio reaches the input size: stretched, or scaled and centred on black."""

INTENSITIES = ("none", "equalize")
"""Per-image intensity standardisation after resizing: ``none``, or ``equalize``: histogram equalisation of the
resized image (256 levels), which gives every image the same grey-level distribution, so that a detector's
contrast, exposure and post-processing curve (and any monotonic brightness, contrast or gamma change) cannot tell
the model where an image came from."""


@dataclass(frozen=True)
class Contract:
    """How pixels become a model input and what the outputs mean.

    Args:
        input_size: (height, width) of the network input.
        class_names: output classes, in the order of the model's outputs.
        channels: input channels; the grayscale image is repeated into each (1 or 3).
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided after subtracting the mean.
        resampling: OpenCV interpolation used to reach the input size (see ``RESAMPLING``).
        fit: ``stretch`` or ``pad`` (see ``FITS``).
        intensity: per-image intensity standardisation after resizing (see ``INTENSITIES``).
        display_names: each class's name for people (default: from the vocabulary, else from the name).
        codes: each class's code as (value, scheme, meaning) (default: the vocabulary's, else a private code).
        findings: findings that sum several classes (default: the vocabulary's groups whose classes are all here);
            every class outside them is its own finding.
        outputs: what the probabilities are (see ``OUTPUT_KINDS``).
        operating_points: for ``sigmoid`` outputs, the probability at or above which each finding is positive
            (default `DEFAULT_OPERATING_POINT` each; `cxr-edge adopt --val` fits them); none for ``softmax``.
        format_version: layout version of this contract.
    """

    input_size: tuple[int, int]
    class_names: tuple[str, ...]
    channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resampling: str = "area"
    fit: str = "stretch"
    intensity: str = "none"
    display_names: tuple[str, ...] = ()
    codes: tuple[Code, ...] = ()
    findings: tuple[Finding, ...] | None = None
    outputs: str = "softmax"
    operating_points: tuple[float, ...] = ()
    format_version: int = field(default=FORMAT_VERSION)

    def __post_init__(self) -> None:
        # Normalise lists (from JSON) to tuples so that equal contracts compare and hash equal.
        for name in ("input_size", "class_names", "mean", "std", "display_names", "operating_points"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.outputs == "sigmoid" and not self.operating_points:
            object.__setattr__(self, "operating_points", (DEFAULT_OPERATING_POINT,) * len(self.class_names))
        object.__setattr__(self, "codes", tuple(tuple(code) for code in self.codes))
        self._fill_from_vocabulary()
        self._validate()

    def _fill_from_vocabulary(self) -> None:
        """Display names, codes and findings not given are the vocabulary's (`cxr_edge.runtime.model.classes`)."""
        names = [n for n in self.class_names if isinstance(n, str)]
        if not self.display_names:
            object.__setattr__(self, "display_names", tuple(
                KNOWN_CLASSES[n].display if n in KNOWN_CLASSES else n.replace("_", " ").capitalize() for n in names))
        if not self.codes:
            object.__setattr__(self, "codes", tuple(
                KNOWN_CLASSES[n].code if n in KNOWN_CLASSES else private_code(n, display)
                for n, display in zip(names, self.display_names, strict=False)))
        if self.findings is None:  # independent findings are never summed
            found = [] if self.outputs == "sigmoid" else \
                [g for g in FINDING_GROUPS if all(member in names for member in g.classes)]
        else:
            found = [f if isinstance(f, Finding) else Finding(**f) for f in self.findings]
        object.__setattr__(self, "findings", tuple(found))

    def _validate(self) -> None:
        problems = []
        if self.format_version not in range(1, FORMAT_VERSION + 1):
            problems.append(
                f"format version {self.format_version} is not understood by this cxr-edge "
                f"(it reads version {FORMAT_VERSION}); upgrade cxr-edge or re-export the model"
            )
        if len(self.input_size) != 2 or not all(isinstance(v, int) and 8 <= v <= 4096 for v in self.input_size):
            problems.append(f"input_size must be two integers between 8 and 4096, got {self.input_size!r}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {self.channels!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            problems.append(f"mean and std need {self.channels} values each, got {self.mean!r} and {self.std!r}")
        if any(not isinstance(m, (int, float)) or not math.isfinite(m) for m in self.mean):
            problems.append(f"mean values must be finite numbers, got {self.mean!r}")
        if any(not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0 for s in self.std):
            problems.append(f"std values must be positive finite numbers, got {self.std!r}")
        if self.resampling not in RESAMPLING:
            problems.append(f"resampling must be one of {', '.join(RESAMPLING)}, got {self.resampling!r}")
        if self.fit not in FITS:
            problems.append(f"fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if self.intensity not in INTENSITIES:
            problems.append(f"intensity must be one of {', '.join(INTENSITIES)}, got {self.intensity!r}")
        elif self.format_version < 2 and self.intensity != "none":
            problems.append("intensity needs contract format version 2")
        names = self.class_names
        if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            problems.append(f"class_names must be distinct non-empty strings, got {names!r}")
        problems += self._label_problems()
        if problems:
            raise ContractError("invalid preprocessing contract: " + "; ".join(problems))

    def _label_problems(self) -> list[str]:
        problems = []
        if len(self.display_names) != len(self.class_names) or len(self.codes) != len(self.class_names):
            problems.append(f"display_names and codes need one entry per class ({len(self.class_names)})")
        if any(len(code) != 3 or not all(isinstance(part, str) and part for part in code) for code in self.codes):
            problems.append("each code must be three non-empty strings: value, scheme, meaning")
        for finding in self.findings:
            missing = [c for c in finding.classes if c not in self.class_names]
            if missing or len(finding.classes) < 2:
                problems.append(f"finding {finding.name!r} must sum two or more of the classes, got "
                                f"{list(finding.classes)}")
        grouped = [c for f in self.findings for c in f.classes]
        if len(grouped) != len(set(grouped)):
            problems.append("a class may belong to one finding only")
        if self.outputs not in OUTPUT_KINDS:
            problems.append(f"outputs must be one of {', '.join(OUTPUT_KINDS)}, got {self.outputs!r}")
        elif self.outputs == "softmax" and self.operating_points:
            problems.append("operating points belong to sigmoid outputs; a softmax model's answer is its top class")
        elif self.outputs == "sigmoid" and (len(self.operating_points) != len(self.class_names) or not all(
                isinstance(p, (int, float)) and 0 < p < 1 for p in self.operating_points)):
            problems.append(f"operating_points need one probability strictly between 0 and 1 per finding "
                            f"({len(self.class_names)}), got {list(self.operating_points)!r}")
        if self.outputs == "sigmoid" and self.findings:
            problems.append("sigmoid findings are independent: they cannot be summed into findings")
        return problems

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def display(self, name: str) -> str:
        """A class's or a finding's name for people."""
        if name in self.class_names:
            return self.display_names[self.class_names.index(name)]
        return next(f.display for f in self.findings if f.name == name)

    def code(self, name: str) -> Code:
        """A class's or a finding's code: (value, scheme, meaning)."""
        if name in self.class_names:
            return self.codes[self.class_names.index(name)]
        return next(f.code for f in self.findings if f.name == name)

    @property
    def finding_names(self) -> tuple[str, ...]:
        """Every finding a result can have, in class order: a group where its first member stands, else a class."""
        order = []
        for name in self.class_names:
            group = self.finding_of(name)
            if group not in order:
                order.append(group)
        return tuple(order)

    def finding_of(self, class_name: str) -> str:
        """The finding a class is reported under: its group's name, or itself."""
        return next((f.name for f in self.findings if class_name in f.classes), class_name)

    def finding(self, probabilities: Mapping[str, float]) -> tuple[str, float]:
        """The most probable finding and its probability (a group's is the sum of its classes')."""
        sums: dict[str, float] = {}
        for name, p in probabilities.items():
            group = self.finding_of(name)
            sums[group] = sums.get(group, 0.0) + float(p)
        best = max(sums, key=sums.get)
        return best, sums[best]

    @property
    def multi_label(self) -> bool:
        """Independent findings (sigmoid outputs) rather than one distribution over classes."""
        return self.outputs == "sigmoid"

    def positives(self, probabilities: Mapping[str, float]) -> tuple[str, ...]:
        """The findings at or above their operating points, most probable first (empty for softmax models)."""
        if not self.multi_label:
            return ()
        points = dict(zip(self.class_names, self.operating_points, strict=True))
        return tuple(sorted((n for n, p in probabilities.items() if n in points and p >= points[n]),
                            key=lambda n: -probabilities[n]))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for checkpoints and reports); a softmax contract leaves out the operating points,
        so that runtimes made before multi-label models still read it."""
        data = asdict(self)
        if not self.operating_points:
            del data["operating_points"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Contract:
        """Inverse of `to_dict`; unknown or missing keys are a `ContractError`, not a silent default."""
        if not isinstance(data, Mapping):
            raise ContractError(f"a contract must be a mapping, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ContractError(f"contract has unknown fields: {', '.join(unknown)}")
        missing = [k for k in ("input_size", "class_names") if k not in data]
        if missing:
            raise ContractError(f"contract lacks required fields: {', '.join(missing)}")
        try:
            return cls(**data)
        except (TypeError, KeyError) as exc:
            raise ContractError(f"contract fields have wrong types: {exc}") from exc

    def to_metadata(self) -> dict[str, str]:
        """Key/value strings for ONNX ``metadata_props`` (and OpenVINO rt_info)."""
        return {VERSION_KEY: str(self.format_version), CONTRACT_KEY: json.dumps(self.to_dict(), sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> Contract:
        """Read a contract back from model metadata; a model without one is refused with the reason."""
        if CONTRACT_KEY not in metadata:
            raise ContractError(
                f"the model carries no cxr-edge preprocessing contract (metadata key {CONTRACT_KEY!r}); "
                "export it with `cxr-edge export` so the runtime knows how to preprocess images"
            )
        version = metadata.get(VERSION_KEY)
        if version is not None and version not in {str(v) for v in range(1, FORMAT_VERSION + 1)}:
            raise ContractError(
                f"the model's contract has format version {version}; this cxr-edge reads version {FORMAT_VERSION}"
            )
        try:
            data = json.loads(metadata[CONTRACT_KEY])
        except json.JSONDecodeError as exc:
            raise ContractError(f"the model's contract is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
