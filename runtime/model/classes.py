"""The classes cxr-edge knows by name: what they are called, how reports code them, which folder names mean them,
and which coarse labels stand for several of them.

This is the vocabulary a model is *made* from: training copies the display names, codes and findings of its
classes into the model's contract (`cxr_edge.runtime.model.contract.Contract`), and from then on every report,
table and page reads them from the model, never from here. A model with classes this vocabulary does not know
(an adopted one, a three-class test model) carries its own names and codes and works the same way.

Codes (SNOMED CT, international edition):
- normal: SCT 17621005 "Normal" (qualifier value);
- COVID-19: SCT 840539006 "Disease caused by severe acute respiratory syndrome coronavirus 2" (disorder), shown
  by its synonym "COVID-19" (the full name exceeds a DICOM Code Meaning's 64 characters). The more specific
  882784691000119100 "Pneumonia caused by SARS-CoV-2" is in the US extension only, and its 18 digits do not fit a
  DICOM Code Value (SH, 16 characters);
- bacterial pneumonia: SCT 53084003; viral pneumonia: SCT 75570004;
- the finding "pneumonia" (bacterial or viral, the subtype aside): SCT 233604007 "Pneumonia" (disorder).
A class without a standard code gets one of the private scheme `PRIVATE_SCHEME`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Code", "KnownClass", "Finding", "KNOWN_CLASSES", "DEFAULT_CLASSES", "COARSE_LABELS", "COARSE_ALIASES",
           "FINDING_GROUPS",
           "PRIVATE_SCHEME", "private_code", "resolve_label", "folder_key"]

PRIVATE_SCHEME = "99CXREDGE"
"""cxr-edge's private coding scheme, for what no standard code names (declared in every coded report)."""

Code = tuple[str, str, str]
"""(code value, coding scheme designator, code meaning), as DICOM and FHIR both spell a code."""


@dataclass(frozen=True)
class KnownClass:
    """A class cxr-edge can train: its name in models, its name for people, its code, and folder names meaning it."""

    name: str
    display: str
    code: Code
    aliases: tuple[str, ...]


KNOWN_CLASSES: dict[str, KnownClass] = {c.name: c for c in (
    KnownClass("normal", "Normal", ("17621005", "SCT", "Normal"),
               ("normal", "healthy", "no_finding", "nofinding", "negative")),
    KnownClass("covid19", "COVID-19", ("840539006", "SCT", "COVID-19"),
               ("covid19", "covid", "covid_19", "sars_cov_2", "coronavirus")),
    KnownClass("bacterial_pneumonia", "Bacterial pneumonia", ("53084003", "SCT", "Bacterial pneumonia"),
               ("bacterial_pneumonia", "pneumonia_bac", "pneumonia_bacterial", "bacterial", "bacteria",
                "bacterial_pneumonias")),
    KnownClass("viral_pneumonia", "Viral pneumonia", ("75570004", "SCT", "Viral pneumonia"),
               ("viral_pneumonia", "pneumonia_vir", "pneumonia_viral", "viral", "virus", "viral_pneumonias")),
)}

DEFAULT_CLASSES = tuple(KNOWN_CLASSES)
"""The classes `cxr-edge train` makes by default, in the order of the model's outputs."""

NUMBERED = {"0": "covid19", "1": "normal", "2": "viral_pneumonia", "3": "bacterial_pneumonia"}
"""The seed project's numbered folders: 0 Covid-19, 1 Normal, 2 Viral Pneumonia, 3 Bacterial Pneumonia."""


@dataclass(frozen=True)
class Finding:
    """A finding reported above the classes: its name, its name for people, the classes it sums, and its code."""

    name: str
    display: str
    classes: tuple[str, ...]
    code: Code

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "code", tuple(self.code))


FINDING_GROUPS: tuple[Finding, ...] = (
    Finding("pneumonia", "Pneumonia", ("bacterial_pneumonia", "viral_pneumonia"), ("233604007", "SCT", "Pneumonia")),
)
"""Findings above the classes. A model whose classes include every member reports the group's finding (the sum of
the members' probabilities) for them."""

COARSE_ALIASES: dict[str, tuple[str, ...]] = {
    "pneumonia": ("pneumonia", "pneumonias", "pneumonia_unknown", "pneumonia_type_unknown")}
"""Folder names of a finding's *coarse label*: their images are one of the finding's classes, not known which."""

COARSE_LABELS: dict[str, tuple[str, ...]] = {g.name: g.classes for g in FINDING_GROUPS}
"""Coarse label -> the classes it stands for."""


def private_code(name: str, display: str) -> Code:
    """The private code of a class or concept no standard code names: ``CXR-`` and its name, upper case."""
    return (f"CXR-{name.upper()}"[:16], PRIVATE_SCHEME, display[:64])


def folder_key(folder_name: str) -> str:
    """A folder name as aliases are written: lower case, spaces, dashes and dots as ``_``."""
    return re.sub(r"[\s\-.]+", "_", folder_name.strip().lower())


def resolve_label(folder_name: str, class_names: Sequence[str]) -> tuple[str, tuple[str, ...]] | None:
    """The label a class folder holds, and the model classes it allows, or None if the folder means nothing here.

    ``COVID-19`` -> ``("covid19", ("covid19",))``; ``3`` -> bacterial pneumonia; ``pneumonia`` (a coarse label)
    -> ``("pneumonia", ("bacterial_pneumonia", "viral_pneumonia"))`` where the model has both. A folder named
    exactly as one of `class_names` always means that class, so models with classes outside the vocabulary read
    their own folders.
    """
    key = folder_key(folder_name)
    names = {folder_key(n): n for n in class_names}
    if key in names:
        return names[key], (names[key],)
    known = next((c.name for c in KNOWN_CLASSES.values() if key in c.aliases), None) or NUMBERED.get(key)
    if known in class_names:
        return known, (known,)
    for group in FINDING_GROUPS:
        if key in COARSE_ALIASES.get(group.name, ()) and all(member in class_names for member in group.classes):
            return group.name, group.classes
    return None
