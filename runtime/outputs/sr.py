"""The result of a received image as a DICOM Basic Text SR that a PACS files beside the image.

The report joins the image's study (same Study Instance UID and patient module) in a series of its own, states
the finding and every class probability as text, says that it is not for diagnostic use, references the image it
was inferred from, and names the model in the Contributing Equipment Sequence. It is COMPLETE and UNVERIFIED: a
machine wrote it and no person has signed it.

Its UIDs are derived from the image's SOP Instance UID and the model, so writing it again after a crash gives the
same object, not a second report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

__all__ = ["BASIC_TEXT_SR", "build_sr", "sr_document", "NOT_FOR_DIAGNOSTIC_USE"]

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
NOT_FOR_DIAGNOSTIC_USE = "Not for diagnostic use: automated classification by cxr-edge, not reviewed by a physician."

# Patient and study attributes copied from the image so that the report files under the same patient and study.
_PATIENT_STUDY = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                  "OtherPatientIDsSequence", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                  "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "SpecificCharacterSet")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(relationship: str, value_type: str, concept: Dataset) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = DicomSequence([concept])
    return item


def _text(relationship: str, concept: Dataset, text: str) -> Dataset:
    item = _item(relationship, "TEXT", concept)
    item.TextValue = text
    return item


def build_sr(image: Dataset, *, label: str | None, probabilities: Mapping[str, float], model_name: str,
             model_sha256: str, software_version: str, warnings: Sequence[str] = (), status: str = "classified",
             finding: str | None = None, finding_probability: float | None = None,
             when: datetime | None = None) -> Dataset:
    """A Basic Text SR for one classified (or rejected) image, ready for ``dcmwrite(..., enforce_file_format=True)``.

    A rejected image's report says that it was not classified and why, and carries no finding and no
    probabilities: a reader of the study must not mistake a refusal for a result.

    Args:
        image: the received image's header (pixel data is not needed).
        label: predicted class name (None for a rejected image).
        probabilities: class name -> probability.
        model_name: the model file's name, recorded as the contributing equipment's model name.
        model_sha256: the model file's hash: it decides, with the image UID, the report's UIDs.
        software_version: cxr-edge's version.
        warnings: doubts about the input (raw detector data, wrong modality), stated in the report; for a
            rejected image, the reasons.
        status: ``classified``, ``uncertain`` or ``rejected`` (`cxr_edge.runtime.model.gate`).
        finding: the finding where it sums several classes (pneumonia), stated before the class.
        finding_probability: its probability.
        when: content date and time (default: now).
    """
    ds = sr_document(image, sop_class=BASIC_TEXT_SR, series_number=9901, uid_tag="sr",
                     model_name=model_name, model_sha256=model_sha256, software_version=software_version, when=when)
    reference = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]

    # Content tree: TID 2000-like report with a device observer, the finding and the evidence image.
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    ds.ContinuityOfContent = "SEPARATE"
    observer_type = _item("HAS OBS CONTEXT", "CODE", _code("121005", "DCM", "Observer Type"))
    observer_type.ConceptCodeSequence = DicomSequence([_code("121007", "DCM", "Device")])
    observer_uid = _item("HAS OBS CONTEXT", "UIDREF", _code("121012", "DCM", "Device Observer UID"))
    observer_uid.UID = generate_uid(entropy_srcs=[model_sha256, "device"])
    observer_name = _text("HAS OBS CONTEXT", _code("121013", "DCM", "Device Observer Name"), f"cxr-edge {model_name}")

    image_ref = _item("INFERRED FROM", "IMAGE", _code("121112", "DCM", "Source of Measurement"))
    image_ref.ReferencedSOPSequence = DicomSequence([reference])
    if status == "rejected" or label is None:
        refusal = _text("CONTAINS", _code("121106", "DCM", "Comment"),
                        "Not classified: the input was rejected as not a frontal chest radiograph like the images "
                        "the model was trained on. No finding is reported.")
        refusal.ContentSequence = DicomSequence([image_ref])
        content = [observer_type, observer_uid, observer_name, refusal]
    else:
        flag = " Uncertain: the probability is below the model's abstention threshold." \
            if status == "uncertain" else ""
        said = f"Classified as {label} (probability {probabilities[label]:.3f})."
        if finding is not None and finding != label and finding_probability is not None:
            said = f"Finding: {finding} (probability {finding_probability:.3f}); most probable subtype {label} " \
                   f"(probability {probabilities[label]:.3f})."
        finding = _text("CONTAINS", _code("121071", "DCM", "Finding"), said + flag)
        finding.ContentSequence = DicomSequence([image_ref])
        details = "; ".join(f"{name} {p:.3f}" for name, p in probabilities.items())
        content = [observer_type, observer_uid, observer_name, finding,
                   _text("CONTAINS", _code("121073", "DCM", "Impression"), f"Class probabilities: {details}.")]
    content += [_text("CONTAINS", _code("121106", "DCM", "Comment"), f"Input warning: {w}") for w in warnings]
    content.append(_text("CONTAINS", _code("121106", "DCM", "Comment"), NOT_FOR_DIAGNOSTIC_USE))
    ds.ContentSequence = DicomSequence(content)
    return ds


def sr_document(image: Dataset, *, sop_class: str, series_number: int, uid_tag: str, model_name: str,
                model_sha256: str, software_version: str, when: datetime | None = None) -> Dataset:
    """Everything of an SR document but its content tree: the image's patient and study modules, the SOP common
    and series attributes, SR Document General (COMPLETE, UNVERIFIED, the image as evidence), the model as
    contributing equipment, and the file meta information. Both report kinds start from it.

    Args:
        image: the received image's header.
        sop_class: the report's SOP Class UID.
        series_number: the report series' number in the study.
        uid_tag: mixed into the UIDs, so that two kinds of report of one image never share one.
        model_name, model_sha256, software_version: the equipment that made the report; the hash, with the
            image's UIDs, decides the report's UIDs.
        when: content date and time (default: now).
    """
    when = when or datetime.now()
    date, time_ = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds = Dataset()
    for keyword in _PATIENT_STUDY:
        if keyword in image:
            setattr(ds, keyword, image[keyword].value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "ReferringPhysicianName"):  # type 2: present, maybe empty
        if keyword not in ds:
            setattr(ds, keyword, "")

    # SOP common and SR document series; UIDs are reproducible from the image and the model.
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(image.SOPInstanceUID), model_sha256, uid_tag])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(image.StudyInstanceUID), model_sha256,
                                                      f"{uid_tag}-series"])
    ds.Modality = "SR"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "cxr-edge classification (not for diagnostic use)"
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.InstanceNumber = 1
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time_
    ds.Manufacturer = "cxr-edge"

    # SR document general
    ds.ContentDate, ds.ContentTime = date, time_
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = DicomSequence()
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    series.ReferencedSOPSequence = DicomSequence([reference])
    evidence = Dataset()
    evidence.StudyInstanceUID = image.StudyInstanceUID
    evidence.ReferencedSeriesSequence = DicomSequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([evidence])

    equipment = Dataset()
    equipment.Manufacturer = "cxr-edge"
    equipment.ManufacturerModelName = model_name
    equipment.SoftwareVersions = software_version
    equipment.DeviceSerialNumber = model_sha256[:16]
    equipment.ContributionDateTime = date + time_
    equipment.ContributionDescription = "Automated chest X-ray classification. " + NOT_FOR_DIAGNOSTIC_USE
    equipment.PurposeOfReferenceCodeSequence = DicomSequence([_code("109102", "DCM", "Processing Equipment")])
    ds.ContributingEquipmentSequence = DicomSequence([equipment])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds
