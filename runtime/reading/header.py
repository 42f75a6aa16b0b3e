"""What a DICOM header says about an image, never who the patient is: the facts that the decoders read once and
the gate, the reports and monitoring use later.

Kept with the readers (not with the gate that judges them), so that reading an image never needs the decision
layer; the vocabulary of radiograph modalities, chest body parts and lateral views lives here once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["HeaderFacts", "RADIOGRAPH_MODALITIES", "UNDECIDED_MODALITIES", "CHEST_WORDS", "LATERAL_VIEWS",
           "age_years"]

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR"})
UNDECIDED_MODALITIES = frozenset({"", "OT", "SC"})
"""Modalities that say nothing about what was imaged (other, secondary capture)."""
CHEST_WORDS = ("CHEST", "THORAX", "THORAC", "LUNG", "TORSO")
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"})


@dataclass(frozen=True)
class HeaderFacts:
    """What a DICOM header says about an image (never who the patient is)."""

    modality: str = ""
    body_part: str = ""
    view_position: str = ""
    age_years: float | None = None
    manufacturer: str = ""
    model_name: str = ""
    software: str = ""
    pixel_spacing: float | None = None
    photometric: str = ""
    transfer_syntax: str = ""
    kvp: float | None = None
    rows: int = 0
    columns: int = 0
    bits_stored: int | None = None

    @classmethod
    def from_dataset(cls, ds: Any) -> HeaderFacts:
        meta = getattr(ds, "file_meta", None)
        return cls(modality=_text(ds, "Modality").upper(), body_part=_text(ds, "BodyPartExamined").upper(),
                   view_position=_text(ds, "ViewPosition").upper(), age_years=age_years(_text(ds, "PatientAge")),
                   manufacturer=_text(ds, "Manufacturer"), model_name=_text(ds, "ManufacturerModelName"),
                   software=_text(ds, "SoftwareVersions"),
                   pixel_spacing=_number(ds, "PixelSpacing") or _number(ds, "ImagerPixelSpacing"),
                   photometric=_text(ds, "PhotometricInterpretation").upper(),
                   transfer_syntax=str(meta.get("TransferSyntaxUID", "") if meta is not None else ""),
                   kvp=_number(ds, "KVP"), rows=int(_number(ds, "Rows") or 0),
                   columns=int(_number(ds, "Columns") or 0), bits_stored=int(_number(ds, "BitsStored") or 0) or None)

    def refusal(self) -> str | None:
        """Why the header alone says this is not a frontal chest radiograph, or None."""
        if self.modality not in RADIOGRAPH_MODALITIES | UNDECIDED_MODALITIES:
            return f"the DICOM modality is {self.modality}, not a radiograph"
        if self.body_part and not any(word in self.body_part for word in CHEST_WORDS):
            return f"the DICOM body part is {self.body_part}, not the chest"
        if self.view_position in LATERAL_VIEWS:
            return f"the DICOM view position is {self.view_position}: a lateral view, not a frontal film"
        return None

    def doubts(self) -> list[str]:
        """What a reader should know about the header even where nothing is refused (the loader's warnings)."""
        found = []
        if self.modality and self.modality not in RADIOGRAPH_MODALITIES:
            found.append(f"modality is {self.modality}, not a radiograph (CR/DX); the model was trained on chest "
                         "X-rays")
        if self.body_part and self.body_part != "CHEST":
            found.append(f"body part is {self.body_part}, not CHEST")
        if self.view_position in LATERAL_VIEWS:
            found.append(f"view position is {self.view_position}: a lateral view; the model was trained on "
                         "frontal films")
        return found


def _text(ds: Any, keyword: str) -> str:
    """A header value as text, several values joined by a backslash as DICOM writes them; never raises."""
    try:
        value = ds.get(keyword, "")
    except Exception:  # a value pydicom cannot convert
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v).strip() for v in value)[:128]
    return str(value or "").strip()[:128]


def _number(ds: Any, keyword: str) -> float | None:
    """The first value of a numeric header field, or None where it is absent or not a finite number."""
    text = _text(ds, keyword).split("\\")[0]
    try:
        value = float(text)
    except ValueError:
        return None
    return round(value, 6) if value == value and abs(value) < 1e9 else None


def age_years(text: str) -> float | None:
    """DICOM Age String (``045Y``, ``018M``, ``003W``, ``010D``) in years, or None."""
    match = re.fullmatch(r"(\d{1,3})([DWMY])", text.strip().upper())
    if not match:
        return None
    return int(match[1]) / {"D": 365.25, "W": 52.18, "M": 12, "Y": 1}[match[2]]
