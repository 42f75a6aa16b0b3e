"""The status of a result: classified, uncertain or rejected, and the warnings that go with it."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_edge.runtime.model.gate import GatePolicy, judge
from cxr_edge.runtime.reading.header import HeaderFacts

POLICY = GatePolicy(gate_threshold=1.5, upright_min=0.5,
                    orientations=("upright", "rotated_90", "rotated_180", "rotated_270", "inverted"),
                    abstain_below=0.6, temperature=0.8,
                    populations={"normal": ["adult", "child"], "covid19": ["adult"],
                                 "bacterial_pneumonia": ["child"], "viral_pneumonia": ["child"]},
                    fitted_on="validation images", validation_images=144)
UPRIGHT = np.array([0.97, 0.01, 0.01, 0.005, 0.005])
SURE_NORMAL = {"normal": 0.9, "covid19": 0.05, "bacterial_pneumonia": 0.03, "viral_pneumonia": 0.02}
SURE_BACTERIAL = {"normal": 0.05, "covid19": 0.05, "bacterial_pneumonia": 0.85, "viral_pneumonia": 0.05}


def test_a_confident_upright_chest_film_is_classified():
    verdict = judge(SURE_NORMAL, policy=POLICY, gate_score=0.6, orientation=UPRIGHT)
    assert (verdict.status, verdict.label, verdict.warnings) == ("classified", "normal", ())
    assert verdict.gate == {"score": 0.6, "threshold": 1.5}


def test_low_top_probability_is_uncertain_and_keeps_its_label():
    unsure = {"normal": 0.45, "covid19": 0.35, "bacterial_pneumonia": 0.1, "viral_pneumonia": 0.1}
    verdict = judge(unsure, policy=POLICY, gate_score=0.6, orientation=UPRIGHT)
    assert verdict.status == "uncertain" and verdict.label == "normal"
    assert verdict.warnings == ("uncertain: the probability of normal (0.45) is below the model's abstention "
                                "threshold 0.60",)


@pytest.mark.parametrize("score, orientation, header, reason", [
    (4.2, UPRIGHT, None, "unlike the chest radiographs the model was trained on (gate score 4.20 over its threshold"),
    (0.6, np.array([0.02, 0.9, 0.04, 0.02, 0.02]), None, "the image does not look upright (probability 0.02, below "
                                                         "0.50); most likely it is turned 90 degrees anticlockwise"),
    (0.6, np.array([0.02, 0.04, 0.02, 0.9, 0.02]), None, "most likely it is turned 90 degrees clockwise"),
    (0.6, np.array([0.1, 0.0, 0.0, 0.0, 0.9]), None, "most likely it is inverted (a negative)"),
    (0.6, UPRIGHT, HeaderFacts(modality="CT"), "the DICOM modality is CT, not a radiograph"),
    (0.6, UPRIGHT, HeaderFacts(modality="DX", body_part="HAND"), "the DICOM body part is HAND, not the chest"),
    (0.6, UPRIGHT, HeaderFacts(modality="CR", view_position="LL"), "view position is LL: a lateral view"),
], ids=["far-from-training", "rotated", "clockwise", "inverted", "ct", "hand", "lateral"])
def test_rejected_inputs_lose_their_label_and_say_why(score, orientation, header, reason):
    verdict = judge(SURE_NORMAL, policy=POLICY, gate_score=score, orientation=orientation, header=header)
    assert verdict.status == "rejected" and verdict.label is None
    assert verdict.warnings[0].startswith("rejected: ") and reason in verdict.warnings[0]


def test_warn_mode_keeps_the_label_and_off_mode_skips_the_gate():
    rotated = np.array([0.02, 0.9, 0.04, 0.02, 0.02])
    warned = judge(SURE_NORMAL, policy=POLICY, mode="warn", gate_score=4.2, orientation=rotated)
    assert warned.status == "classified" and warned.label == "normal"
    assert [w.split(" (")[0] for w in warned.warnings] == [
        "gate: unlike the chest radiographs the model was trained on", "gate: the image does not look upright"]
    assert warned.flagged  # --strict counts it
    off = judge(SURE_NORMAL, policy=POLICY, mode="off", gate_score=4.2, orientation=rotated,
                header=HeaderFacts(modality="CT"), warnings=("modality is CT",))
    assert (off.status, off.label, off.gate, off.warnings) == ("classified", "normal", None, ("modality is CT",))


def test_near_the_threshold_passes_with_a_warning():
    verdict = judge(SURE_NORMAL, policy=POLICY, gate_score=1.3, orientation=UPRIGHT)
    assert verdict.status == "classified"
    assert verdict.warnings == ("gate score 1.30 is near its threshold 1.50: the image is less like the training "
                                "images than most",)


def test_an_adult_called_a_class_only_seen_in_children_is_warned_about():
    adult = HeaderFacts(modality="DX", body_part="CHEST", age_years=45)
    verdict = judge(SURE_BACTERIAL, policy=POLICY, gate_score=0.5, orientation=UPRIGHT, header=adult)
    assert verdict.status == "classified"
    assert verdict.warnings == ("the patient is an adult (PatientAge), but the model saw bacterial_pneumonia only "
                                "in child images",)
    child = HeaderFacts(modality="DX", age_years=4)
    assert judge(SURE_BACTERIAL, policy=POLICY, gate_score=0.5, orientation=UPRIGHT, header=child).warnings == ()
    assert judge(SURE_NORMAL, policy=POLICY, gate_score=0.5, orientation=UPRIGHT, header=adult).warnings == ()


def test_an_adult_with_a_pneumonia_finding_is_told_the_subtype_was_learnt_from_children():
    from dataclasses import replace

    from cxr_edge.runtime.model.contract import Contract

    contract = Contract(input_size=(64, 64), class_names=tuple(SURE_BACTERIAL))
    policy = replace(POLICY, abstain_on="finding")
    adult = HeaderFacts(modality="DX", body_part="CHEST", age_years=45)
    verdict = judge(SURE_BACTERIAL, policy=policy, gate_score=0.5, orientation=UPRIGHT, header=adult,
                    finding=contract.finding(SURE_BACTERIAL), finding_of={n: contract.finding_of(n) for n in
                                                                         SURE_BACTERIAL})
    assert verdict.status == "classified" and verdict.label == "bacterial_pneumonia"
    assert verdict.warnings == ("the patient is an adult (PatientAge): the finding is pneumonia, but its subtype "
                                "bacterial_pneumonia was learnt from child images only",)


def test_abstention_on_the_finding_sums_its_classes():
    """Split between two pneumonia classes, a film is sure of pneumonia though unsure of the subtype."""
    from dataclasses import replace

    from cxr_edge.runtime.model.contract import Contract

    split = {"normal": 0.05, "covid19": 0.05, "bacterial_pneumonia": 0.45, "viral_pneumonia": 0.45}
    contract = Contract(input_size=(64, 64), class_names=tuple(split))
    on_finding = judge(split, policy=replace(POLICY, abstain_on="finding"), gate_score=0.5, orientation=UPRIGHT,
                       finding=contract.finding(split))
    assert on_finding.status == "classified" and contract.finding(split) == ("pneumonia", pytest.approx(0.9))
    on_label = judge(split, policy=POLICY, gate_score=0.5, orientation=UPRIGHT, finding=contract.finding(split))
    assert on_label.status == "uncertain"  # a model made before findings abstains on its top class


def test_a_model_without_a_policy_classifies_everything():
    verdict = judge(SURE_NORMAL, policy=None, gate_score=None, orientation=None)
    assert (verdict.status, verdict.label, verdict.gate) == ("classified", "normal", None)


@pytest.mark.parametrize("text, years", [("045Y", 45.0), ("018M", 1.5), ("006W", 6 / 52.18), ("010D", 10 / 365.25),
                                         ("", None), ("45", None), ("abcY", None)])
def test_dicom_age_strings(text, years):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientAge = text
    got = HeaderFacts.from_dataset(ds).age_years
    assert got == pytest.approx(years) if years is not None else got is None


def test_policy_round_trips_through_model_metadata():
    assert GatePolicy.from_metadata(POLICY.to_metadata()) == POLICY
    assert GatePolicy.from_metadata({}) is None
