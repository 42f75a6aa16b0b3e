"""The heatmap as a DICOM Secondary Capture in the image's study, so that any viewer shows it beside the film.

The picture is `cxr_edge.runtime.outputs.heatmaps.heatmap_picture` at display resolution (at most 1024 px a side):
the activation-map overlay with "NOT FOR DIAGNOSTIC USE", the result and a colour scale burned in, so that a
viewer that shows no overlays or annotations still shows them. It is a new series of the study (number 9903),
DERIVED, with the source image in the Source Image Sequence and Burned In Annotation YES. Its UIDs are derived
from the image's SOP Instance UID and the model, like the reports': writing it again gives the same object.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from .coded_sr import study_header

__all__ = ["build_heatmap_sc", "SC_SERIES_NUMBER"]

SC_SERIES_NUMBER = 9903


def build_heatmap_sc(image: Dataset, picture: np.ndarray, *, model_sha256: str, caption: str) -> Dataset:
    """A Secondary Capture Image of `picture` (RGB uint8) in `image`'s study, ready for ``dcmwrite``.

    Args:
        image: the received image's header; patient and study modules are copied from it.
        picture: from `heatmap_picture`.
        model_sha256: with the image UID, decides the UIDs.
        caption: what the picture shows (label and probability), also the Derivation Description.
    """
    import highdicom as hd

    known = [str(v) for v in image.get("PatientOrientation") or []]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=study_header(image), pixel_array=np.ascontiguousarray(picture),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        patient_orientation=tuple(known) if len(known) == 2 else ("L", "F"),  # a placeholder, emptied below
        series_instance_uid=generate_uid(entropy_srcs=[str(image.StudyInstanceUID), model_sha256, "heatmap-sc"]),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=generate_uid(entropy_srcs=[str(image.SOPInstanceUID), model_sha256, "heatmap-sc"]),
        instance_number=1, manufacturer="cxr-edge", transfer_syntax_uid="1.2.840.10008.1.2.1")
    if len(known) != 2:
        sc.PatientOrientation = None  # type 2: present and empty, rather than an orientation nobody stated
    sc.BodyPartExamined = "CHEST"  # an unpaired part: Laterality stays absent (PS3.3 General Series, type 2C)
    sc.SeriesDescription = "cxr-edge heatmap (not for diagnostic use)"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = f"cxr-edge class activation map: {caption}"[:1024]
    source = Dataset()
    source.ReferencedSOPClassUID = image.SOPClassUID
    source.ReferencedSOPInstanceUID = image.SOPInstanceUID
    sc.SourceImageSequence = DicomSequence([source])
    sc.ConversionType = "WSD"  # workstation: made by software from another image
    return sc
