"""The result of an image as FHIR (R5): a Bundle with one DiagnosticReport and one Observation, for systems that
take results as FHIR rather than DICOM.

Built and validated with ``fhir.resources`` (pydantic models of the FHIR specification): a resource that does
not match the specification raises before anything is written. The Observation's value is the finding coded as
in the DICOM SR (the model contract's codes: SNOMED CT for the shipped model), with each class probability as a
component; a rejected image gets an Observation without a value, with data-absent reason ``not-performed`` and
the reasons as text. Both are ``preliminary``: a machine wrote them and nobody has signed them. The image is named
by its SOP Instance UID (``urn:dicom:uid``). No patient identifier is written unless the user asks
(``--keep-phi``): the subject is then the patient's ID and name from the DICOM header.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from ..model.contract import Contract
from .sr import NOT_FOR_DIAGNOSTIC_USE

__all__ = ["build_fhir_bundle", "coding", "SNOMED", "OBSERVATION_SYSTEM"]

SNOMED = "http://snomed.info/sct"
SYSTEMS = {"SCT": SNOMED, "LN": "http://loinc.org", "DCM": "http://dicom.nema.org/resources/ontology/DCM"}
"""FHIR code systems of the DICOM coding scheme designators a contract may use; any other scheme becomes a URN."""
OBSERVATION_SYSTEM = "urn:cxr-edge:concept"
"""cxr-edge's own concepts (the classification, the per-class probability): no standard code exists for them."""


def _uuid(*parts: str) -> str:
    """A UUID derived from the parts: the same image and model give the same resource ids."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "cxr-edge:" + ":".join(parts)))


def coding(contract: Contract, name: str) -> dict[str, str]:
    """A class's or finding's code as a FHIR Coding."""
    value, scheme, meaning = contract.code(name)
    return {"system": SYSTEMS.get(scheme, f"urn:cxr-edge:scheme:{scheme}"), "code": value, "display": meaning}


def _quantity(name: str, display: str, value: float) -> dict[str, Any]:
    return {"code": {"coding": [{"system": OBSERVATION_SYSTEM, "code": f"probability-{name}",
                                 "display": f"Probability of {display}"}]},
            "valueQuantity": {"value": round(float(value), 6), "unit": "1", "system": "http://unitsofmeasure.org",
                              "code": "1"}}


def _finding(observation: dict[str, Any], record: Mapping[str, Any], contract: Contract) -> str:
    """Fill the Observation's value (the finding) and components (its probability, the classes'); the conclusion."""
    label, finding = record["label"], record.get("finding") or record["label"]
    observation["valueCodeableConcept"] = {"coding": [coding(contract, finding)]}
    components = [_quantity(name, contract.display(name), p) for name, p in record["probabilities"].items()
                  if name in contract.class_names]
    conclusion = f"Classified as {label} (probability {record['probabilities'][label]:.3f})."
    if finding != label:
        components.insert(0, _quantity(finding, contract.display(finding), record["finding_probability"]))
        conclusion = (f"Finding: {finding} (probability {record['finding_probability']:.3f}); most probable subtype "
                      f"{label} (probability {record['probabilities'][label]:.3f}).")
    observation["component"] = components
    if record.get("status") == "uncertain":
        observation["interpretation"] = [{"text": "Uncertain: below the model's abstention threshold"}]
    return conclusion


def _findings(observation: dict[str, Any], record: Mapping[str, Any], contract: Contract) -> tuple[str, list[dict]]:
    """A multi-label result: the main Observation holds every finding's probability and names the positive ones;
    each positive finding gets an Observation of its own, coded (returned, most probable first)."""
    probabilities = {n: p for n, p in record["probabilities"].items() if n in contract.class_names}
    observation["component"] = [_quantity(n, contract.display(n), p) for n, p in probabilities.items()]
    positive = list(record["positive"])
    observation["valueString"] = f"positive: {', '.join(positive)}" if positive else \
        "no finding at or above its operating point"
    own = []
    for name in positive:
        item = {key: value for key, value in observation.items() if key not in ("component", "valueString")}
        item["id"] = _uuid(observation["id"], name)
        item["valueCodeableConcept"] = {"coding": [coding(contract, name)]}
        item["component"] = [_quantity(name, contract.display(name), probabilities[name])]
        own.append(item)
    said = ", ".join(f"{n} ({probabilities[n]:.3f})" for n in positive)
    return (f"Positive findings: {said}." if positive else "No finding at or above its operating point."), own


def _rejection(observation: dict[str, Any], record: Mapping[str, Any]) -> str:
    observation["dataAbsentReason"] = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "not-performed",
                    "display": "Not Performed"}],
        "text": "; ".join(record["warnings"]) or "rejected: not like the images the model was trained on"}
    return "Not classified: the input was rejected. No finding is reported."


def build_fhir_bundle(record: Mapping[str, Any], contract: Contract, *, model_sha256: str, software_version: str,
                      patient: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A validated FHIR Bundle (type collection) as a JSON-ready dict.

    Args:
        record: the result record (status, label, finding, probabilities, warnings, finished, sop_instance_uid).
        contract: the model's contract (codes and display names of its classes and findings).
        model_sha256: the model's hash (the device's identity; with the image UID, the resource ids).
        software_version: cxr-edge's version.
        patient: ``{"id": ..., "name": ...}`` to name the subject; None writes no patient identifier.
    """
    from fhir.resources.bundle import Bundle

    image_uid = str(record.get("sop_instance_uid") or record.get("sha256"))
    observation_id, report_id = _uuid(image_uid, model_sha256, "obs"), _uuid(image_uid, model_sha256, "report")
    rejected = record.get("status") == "rejected" or record.get("label") is None
    device = {"display": f"cxr-edge {software_version}, model {record.get('model')} (sha256 {model_sha256[:16]})"}
    identifier = [{"system": "urn:dicom:uid", "value": f"urn:oid:{image_uid}"}] \
        if record.get("sop_instance_uid") else [{"system": "urn:cxr-edge:sha256", "value": record.get("sha256")}]
    subject = {"identifier": {"value": patient["id"]}, "display": patient.get("name") or None} if patient else None
    observation: dict[str, Any] = {
        "resourceType": "Observation", "id": observation_id, "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [{"system": OBSERVATION_SYSTEM, "code": "chest-xray-classification",
                             "display": "Chest X-ray classification"}]},
        "issued": record["finished"], "device": device, "identifier": identifier,
        "note": [{"text": NOT_FOR_DIAGNOSTIC_USE}, *({"text": f"Input warning: {w}"} for w in record["warnings"])],
    }
    own: list[dict[str, Any]] = []
    if rejected:
        conclusion = _rejection(observation, record)
    elif record.get("positive") is not None:
        conclusion, own = _findings(observation, record, contract)
    else:
        conclusion = _finding(observation, record, contract)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": report_id, "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                                  "display": "Radiology"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4",
                             "display": "Diagnostic imaging study"}]},
        "issued": record["finished"], "identifier": identifier,
        "result": [{"reference": f"urn:uuid:{item['id']}"} for item in [observation, *own]],
        "conclusion": f"{conclusion} {NOT_FOR_DIAGNOSTIC_USE}",
    }
    if own:
        report["conclusionCode"] = [item["valueCodeableConcept"] for item in own]
    elif not rejected and "valueCodeableConcept" in observation:
        report["conclusionCode"] = [observation["valueCodeableConcept"]]
    if subject is not None:
        for resource in (observation, report, *own):
            resource["subject"] = subject
    bundle = Bundle.model_validate({
        "resourceType": "Bundle", "id": _uuid(image_uid, model_sha256, "bundle"), "type": "collection",
        "timestamp": record["finished"],
        "entry": [{"fullUrl": f"urn:uuid:{report_id}", "resource": report},
                  *({"fullUrl": f"urn:uuid:{item['id']}", "resource": item} for item in [observation, *own])]})
    return bundle.model_dump(mode="json", exclude_none=True)
