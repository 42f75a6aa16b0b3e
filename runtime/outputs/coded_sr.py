"""The result of a received image as a coded DICOM SR: a TID 1500 Measurement Report in a Comprehensive 3D SR.

PACS and AI orchestrators (IHE AI Results) read findings as codes, not text. One report per image, built with
highdicom, holds one measurement group (TID 1501) that:
- references the source image (the group's source image, and the report's evidence);
- names the algorithm (TID 4019: model file name, cxr-edge version, the model's SHA-256 as a parameter);
- for a classified or uncertain image: the finding (the group's coded Finding, TID 1501: a class, or a finding
  that sums several such as pneumonia) with its probability; where the finding sums classes, the most probable
  of them as its own coded item ("subtype"); and each class probability as a numeric measurement (unit UCUM ``1``);
- always: the classification status (classified, uncertain, rejected) and the gate's score; the warnings and
  the reasons for a rejection as comments; "not for diagnostic use".
A rejected image's report says rejected and why, and carries no finding and no probabilities.

Every code of a class or a finding comes from the model's contract (`Contract.codes`, `Contract.findings`): the
shipped model carries SNOMED CT codes (`cxr_edge.runtime.model.classes`), another model its own. Procedure: SCT
399208008 "Plain chest X-ray"; comments: DCM 121106 "Comment"; unit: UCUM ``1``. No standard code exists for a
classifier's probabilities, its abstention status, its input gate or "most probable subtype", so those concept
names use the private scheme ``99CXREDGE`` (declared in the Coding Scheme Identification Sequence).

UIDs are derived from the image's SOP Instance UID and the model's hash, as for the Basic Text SR: rebuilding
a report after a crash, or sending it twice to a PACS, gives the same object.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ..model.classes import PRIVATE_SCHEME
from ..model.contract import Contract
from .sr import NOT_FOR_DIAGNOSTIC_USE, sr_document

__all__ = ["build_coded_sr", "study_header", "code_of", "probability_code", "STATUS_CODES", "SUBTYPE",
           "COMPREHENSIVE_3D_SR", "SR_SERIES_NUMBER"]

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SR_SERIES_NUMBER = 9902
"""Series number of the coded reports (the Basic Text SR uses 9901, the heatmap Secondary Capture 9903)."""

STATUS_CODES: dict[str, Code] = {
    "classified": Code("CXR-S1", PRIVATE_SCHEME, "Classified"),
    "uncertain": Code("CXR-S2", PRIVATE_SCHEME, "Uncertain: below the abstention threshold"),
    "rejected": Code("CXR-S3", PRIVATE_SCHEME, "Rejected: not like the images the model was trained on"),
}

_STATUS = Code("CXR-C1", PRIVATE_SCHEME, "Classification status")
SUBTYPE = Code("CXR-C3", PRIVATE_SCHEME, "Most probable subtype")
"""Names the class that a finding of several classes (pneumonia: bacterial or viral) most probably is."""
_GATE_SCORE = Code("CXR-C2", PRIVATE_SCHEME, "Input gate score")
_COMMENT = Code("121106", "DCM", "Comment")
_PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
_UNITLESS = Code("1", "UCUM", "no units")


def code_of(contract: Contract, name: str) -> Code:
    """The coded concept of a class or a finding, as the model's contract names it."""
    value, scheme, meaning = contract.code(name)
    return Code(value, scheme, meaning)


def probability_code(contract: Contract, name: str) -> Code:
    """The private concept "Probability of <class or finding>" (one per class, then one per finding)."""
    if name in contract.class_names:
        value = f"CXR-P-{contract.class_names.index(name) + 1}"
    else:
        value = f"CXR-PF-{[f.name for f in contract.findings].index(name) + 1}"
    return Code(value, PRIVATE_SCHEME, f"Probability of {contract.display(name)}"[:64])


_KEPT = ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDsSequence",
         "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
         "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "SeriesInstanceUID", "SOPClassUID",
         "SOPInstanceUID", "Modality", "PatientOrientation", "BodyPartExamined", "Laterality", "ImageLaterality")
"""What a report or a heatmap takes from the image: its patient and study modules and the image's identity."""


def study_header(image: Dataset) -> Dataset:
    """A new dataset with what the report needs from the image (`_KEPT`): the patient and study attributes present,
    empty where the image has none (DICOM type 2) or has a date or time that is not one. The image is not changed.
    Only these are copied, because the report's builder copies and walks what it is given."""
    from pydicom.dataelem import DataElement
    from pydicom.valuerep import DA, DT, TM

    evidence = Dataset()
    for keyword in _KEPT:
        if keyword not in image:
            continue
        element = image[keyword]
        value = element.value
        parse = {"DA": DA, "TM": TM, "DT": DT}.get(element.VR)
        if parse is not None and value not in (None, ""):
            try:  # a date a modality wrote wrongly must not stop the report
                parse(value)
            except (ValueError, TypeError):
                value = None
        evidence.add(DataElement(element.tag, element.VR, value))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if keyword not in evidence:
            setattr(evidence, keyword, "")
    return evidence


def _group(hd: Any, image: Dataset, model_sha256: str, algorithm: Any, finding_type: Any, measurements: list[Any],
           qualitative: list[Any], key: str) -> Any:
    """One TID 1501 measurement group about the source image (its tracking UID derived from `key`)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[str(image.SOPInstanceUID), model_sha256, key]),
            identifier="cxr-edge chest X-ray classification"),
        algorithm_id=algorithm, finding_type=finding_type,
        source_images=[hd.sr.SourceImageForMeasurementGroup(str(image.SOPClassUID), str(image.SOPInstanceUID))],
        measurements=measurements or None, qualitative_evaluations=qualitative)


def _finding_groups(hd: Any, image: Dataset, record: Mapping[str, Any], contract: Contract, algorithm: Any,
                    model_sha256: str, qualitative: list[Any], gate: list[Any]) -> list[Any]:
    """A multi-label model's report: one group per positive finding (its code and probability), then one without
    a finding type holding every finding's probability and the gate's score; only that last one when no finding
    is positive."""
    probabilities = {n: float(p) for n, p in record["probabilities"].items() if n in contract.class_names}
    groups = [_group(hd, image, model_sha256, algorithm, code_of(contract, name),
                     [hd.sr.Measurement(name=probability_code(contract, name), value=probabilities[name],
                                        unit=_UNITLESS)], list(qualitative), f"tracking-{name}")
              for name in record["positive"]]
    every = [hd.sr.Measurement(name=probability_code(contract, n), value=p, unit=_UNITLESS)
             for n, p in probabilities.items()]
    return groups + [_group(hd, image, model_sha256, algorithm, None, every + gate, list(qualitative), "tracking")]


def build_coded_sr(image: Dataset, record: Mapping[str, Any], contract: Contract, *, model_name: str,
                   model_sha256: str, software_version: str, when: datetime | None = None) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) for one image, ready for ``dcmwrite(..., enforce_file_format=True)``.

    Args:
        image: the received image's header (pixel data is not needed); its patient and study modules are copied.
        record: the result record: status, label, finding and its probability, probabilities, gate, warnings.
        contract: the model's contract (codes and display names of its classes and findings).
        model_name: the model file's name (algorithm name and device model name).
        model_sha256: the model file's hash: the algorithm's identity, and with the image UID the report's UIDs.
        software_version: cxr-edge's version.
        when: content date and time (default: now).
    """
    import highdicom as hd

    when = when or datetime.now()
    status, label, finding = record.get("status", "classified"), record.get("label"), record.get("finding")
    rejected = status == "rejected" or label is None
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"cxr-edge {model_name}"[:64], version=software_version,
        parameters=[f"model_sha256={model_sha256}"])
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[model_sha256, "device"]), name="cxr-edge", manufacturer_name="cxr-edge",
            model_name=model_name[:64], serial_number=model_sha256[:16]))
    qualitative = [hd.sr.QualitativeEvaluation(_STATUS, STATUS_CODES["rejected" if rejected else status])]
    measurements = []
    gate_score = (record.get("gate") or {}).get("score")
    gate = [] if gate_score is None else [hd.sr.Measurement(name=_GATE_SCORE, value=float(gate_score),
                                                            unit=_UNITLESS)]
    if not rejected and record.get("positive") is not None:
        groups = _finding_groups(hd, image, record, contract, algorithm, model_sha256, qualitative, gate)
    elif not rejected:
        finding = finding or label
        if finding != label:  # a finding of several classes: its probability, and the subtype as its own item
            measurements.append(hd.sr.Measurement(name=probability_code(contract, finding), unit=_UNITLESS,
                                                  value=float(record["finding_probability"])))
            qualitative.append(hd.sr.QualitativeEvaluation(SUBTYPE, code_of(contract, label)))
        measurements += [hd.sr.Measurement(name=probability_code(contract, name), value=float(p), unit=_UNITLESS)
                         for name, p in record["probabilities"].items() if name in contract.class_names]
    if rejected or record.get("positive") is None:
        groups = [_group(hd, image, model_sha256, algorithm, None if rejected else code_of(contract, finding),
                         measurements + gate, qualitative, "tracking")]
    group = groups[0]
    warnings = record.get("warnings") or ()
    comments = ([f"Not classified: {w}" for w in warnings] or ["Not classified."]) if rejected else \
        [f"Input warning: {w}" for w in warnings]
    for text in [*comments, NOT_FOR_DIAGNOSTIC_USE]:
        group[0].ContentSequence.append(hd.sr.TextContentItem(name=_COMMENT, value=text[:1024],
                                                              relationship_type="CONTAINS"))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=_PLAIN_CHEST_XRAY, imaging_measurements=groups)
    # The document modules are set here (as for the Basic Text SR) rather than by highdicom's Comprehensive3DSR,
    # which copies and re-reads the whole content tree: 18 ms a report against about 5, measured, and a DICOM
    # node under a flood has no time to spare. dciodvfy, dsrdump and highdicom's reader check the result.
    sr = sr_document(study_header(image), sop_class=COMPREHENSIVE_3D_SR, series_number=SR_SERIES_NUMBER,
                     uid_tag="coded-sr", model_name=model_name, model_sha256=model_sha256,
                     software_version=software_version, when=when)
    sr.PreliminaryFlag = "PRELIMINARY"  # a machine's result that nobody has signed
    root = report[0]
    for keyword in ("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent", "ContentTemplateSequence",
                    "ContentSequence"):
        if keyword in root:
            setattr(sr, keyword, root[keyword].value)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "cxr-edge classification concepts"
    scheme.CodingSchemeResponsibleOrganization = "cxr-edge"
    sr.CodingSchemeIdentificationSequence = DicomSequence([scheme])
    return sr
