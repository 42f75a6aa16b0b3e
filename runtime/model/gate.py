"""What a result means: classified, uncertain or rejected, and why; decided from the model's own policy.

A model file carries its `GatePolicy` (written at export from validation images, never recomputed here) and
computes two gate outputs in its graph: how unlike its training images an input is (``gate_score``) and whether
it is upright and positive (``orientation``). `judge` turns those, the top probability and what a DICOM header
says into one status:

- ``rejected``: not a frontal chest radiograph like the training images (a gate score above the threshold, a
  rotated or inverted film, a DICOM header naming a lateral view, another body part or a modality that is not a
  radiograph). The label is withheld; the probabilities stay in the record for those who want them.
- ``uncertain``: the top probability is below the model's abstention threshold; the label is kept and flagged.
- ``classified``: neither.
Warnings say what else a reader should know: the header's doubts, a gate score near its threshold, or a patient
whose age group the predicted class never had in training (adults called bacterial pneumonia were only ever
shown children's pneumonias).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..choices import GATE_MODES, STATUSES
from ..errors import ContractError
from ..reading.header import HeaderFacts
from .model_file import GATE_KEY

__all__ = ["GatePolicy", "Verdict", "judge", "GATE_MODES", "STATUSES", "NEAR_THRESHOLD", "NO_GATE",
           "ADULT_AGE_YEARS"]

NO_GATE = "no gate: the model has no gate, so an image unlike its training films is classified too"
"""Said in every record of a model without a gate threshold (an adopted model): nothing judged the input."""

NEAR_THRESHOLD = 0.8
"""A gate score above this share of the threshold passes with a warning."""
ADULT_AGE_YEARS = 18


@dataclass(frozen=True)
class GatePolicy:
    """A model's reliability settings, fitted on its validation images at export.

    Args:
        gate_threshold: gate scores above this are rejected (None: the model computes no gate score).
        upright_min: below this probability of upright, an input is rejected as rotated or inverted.
        orientations: the names of the orientation output's columns.
        abstain_below: below this probability a result is uncertain: of the top finding (a finding such as
            pneumonia sums its classes) where `abstain_on` is ``finding``, else of the top class.
        abstain_on: ``finding`` or ``label`` (models made before findings).
        temperature: what the logits were divided by before the softmax (already inside the graph; recorded).
        populations: class -> age groups it had in training (``child``, ``adult``, ``unknown``).
        fitted_on: what the thresholds were fitted on.
        validation_images: how many.
        site_scale: what a site's own films refitted the calibration by (`cxr-edge validate --write-site-model`):
            probabilities become softmax(site_scale x log p), a second temperature of 1 / site_scale; 1 as shipped.
    """

    gate_threshold: float | None = None
    upright_min: float | None = None
    orientations: tuple[str, ...] = ()
    abstain_below: float | None = None
    abstain_on: str = "label"
    temperature: float = 1.0
    populations: Mapping[str, Sequence[str]] = field(default_factory=dict)
    fitted_on: str = ""
    validation_images: int = 0
    site_scale: float = 1.0

    def to_metadata(self) -> dict[str, str]:
        return {GATE_KEY: json.dumps(asdict(self), sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> GatePolicy | None:
        """The policy a model carries, None for a model made without one, `ContractError` if it is damaged."""
        if GATE_KEY not in metadata:
            return None
        try:
            data = json.loads(metadata[GATE_KEY])
            return cls(**{k: tuple(v) if k == "orientations" else v for k, v in data.items()})
        except (json.JSONDecodeError, TypeError) as exc:
            raise ContractError(f"the model's gate policy ({GATE_KEY}) is unreadable: {exc}") from exc


ORIENTATION_WORDS = {"upright": "upright", "rotated_90": "turned 90 degrees anticlockwise",
                     "rotated_180": "upside down", "rotated_270": "turned 90 degrees clockwise",
                     "inverted": "inverted (a negative)"}
"""How the orientation head's columns are said to people: which way the image is turned, as a viewer sees it
(``rotated_90`` is the training image turned by numpy's rot90 once, anticlockwise)."""


@dataclass(frozen=True)
class Verdict:
    """The outcome for one classified input.

    Attributes:
        status: one of `STATUSES`.
        label: the top class, or None when rejected.
        gate: the gate's score and threshold, or None.
        warnings: what a reader should know, and for a rejected input why.
        flagged: the gate objected (rejected, or with ``--gate warn`` kept with a warning).
    """

    status: str
    label: str | None
    gate: dict[str, float] | None
    warnings: tuple[str, ...]
    flagged: bool = False


def judge(probabilities: Mapping[str, float], *, policy: GatePolicy | None, mode: str = "reject",
          gate_score: float | None = None, orientation: np.ndarray | None = None,
          header: HeaderFacts | None = None, warnings: Sequence[str] = (),
          finding: tuple[str, float] | None = None, finding_of: Mapping[str, str] | None = None) -> Verdict:
    """Decide the status of one input whose probabilities are known.

    Args:
        probabilities: class -> probability.
        policy: the model's policy (None: no gate and no abstention).
        mode: one of `GATE_MODES`.
        gate_score: the model's gate output for this input.
        orientation: the model's orientation output for this input.
        header: DICOM header facts, for DICOM inputs.
        warnings: the loader's own doubts, kept first.
        finding: the top finding and its probability (`Contract.finding`); the top class where None.
        finding_of: class -> the finding it is reported under (`Contract.finding_of`), for the age warning.
    """
    label = max(probabilities, key=probabilities.get)
    said = list(warnings)
    gate, refusals, near = _gate_objections(policy, mode, gate_score, orientation, header)
    said += near
    last = (NO_GATE,) if (policy is None or policy.gate_threshold is None) and mode != "off" else ()
    if refusals and mode == "reject":
        return Verdict("rejected", None, gate, tuple([f"rejected: {r}" for r in refusals] + said) + last, True)
    said += [f"gate: {r}" for r in refusals]
    said += _age_doubts(label, policy, header, (finding_of or {}).get(label, label))
    name, confidence = finding if finding is not None and policy is not None and policy.abstain_on == "finding" \
        else (label, probabilities[label])
    if policy is not None and policy.abstain_below is not None and confidence < policy.abstain_below:
        said.append(f"uncertain: the probability of {name} ({confidence:.2f}) is below the model's abstention "
                    f"threshold {policy.abstain_below:.2f}")
        return Verdict("uncertain", label, gate, tuple(said) + last, bool(refusals))
    return Verdict("classified", label, gate, tuple(said) + last, bool(refusals))


def _gate_objections(policy: GatePolicy | None, mode: str, gate_score: float | None, orientation: np.ndarray | None,
                     header: HeaderFacts | None) -> tuple[dict[str, float] | None, list[str], list[str]]:
    """The gate's score and threshold, why it would refuse the input, and its warnings short of refusing."""
    refusals: list[str] = []
    near: list[str] = []
    gate = None
    if mode == "reject" and header is not None and (reason := header.refusal()):
        refusals.append(reason)  # in the other modes the loader's own warnings already say it
    if mode == "off":
        return gate, refusals, near
    if gate_score is not None and not math.isfinite(gate_score):
        refusals.append("the model's gate score is not a number: the image cannot be judged")
    elif policy is not None and policy.gate_threshold is not None and gate_score is not None:
        gate = {"score": round(float(gate_score), 4), "threshold": round(policy.gate_threshold, 4)}
        if gate_score > policy.gate_threshold:
            refusals.append(f"unlike the chest radiographs the model was trained on (gate score {gate_score:.2f} "
                            f"over its threshold {policy.gate_threshold:.2f})")
        elif gate_score > NEAR_THRESHOLD * policy.gate_threshold:
            near.append(f"gate score {gate_score:.2f} is near its threshold {policy.gate_threshold:.2f}: the image "
                        "is less like the training images than most")
    if policy is not None and policy.upright_min is not None and orientation is not None:
        refusals += _orientation_refusal(policy, orientation)
    return gate, refusals, near


def _orientation_refusal(policy: GatePolicy, orientation: np.ndarray) -> list[str]:
    """Why the image does not look upright, said with the way it seems turned; nothing when it does."""
    if not np.isfinite(orientation).all():
        return ["the model's orientation output is not a number: the image cannot be judged"]
    upright = float(orientation[0])
    if upright >= policy.upright_min:
        return []
    others = {name: float(p) for name, p in zip(policy.orientations[1:], orientation[1:], strict=False)}
    likeliest = max(others, key=others.get)
    words = ORIENTATION_WORDS.get(likeliest, likeliest.replace("_", " "))
    return [f"the image does not look upright (probability {upright:.2f}, below {policy.upright_min:.2f}); most "
            f"likely it is {words} (probability {others[likeliest]:.2f})"]


def _age_doubts(label: str, policy: GatePolicy | None, header: HeaderFacts | None, finding: str) -> list[str]:
    """A patient (DICOM PatientAge) of an age group the predicted class was never trained on."""
    if header is None or header.age_years is None or policy is None or not policy.populations:
        return []
    group = "adult" if header.age_years >= ADULT_AGE_YEARS else "child"
    seen_in = [g for g in policy.populations.get(label, ()) if g != "unknown"]
    if not seen_in or group in seen_in:
        return []
    who = "an adult" if group == "adult" else "a child"
    if finding != label:
        return [f"the patient is {who} (PatientAge): the finding is {finding}, but its subtype {label} was learnt "
                f"from {' and '.join(seen_in)} images only"]
    return [f"the patient is {who} (PatientAge), but the model saw {label} only in {' and '.join(seen_in)} images"]
