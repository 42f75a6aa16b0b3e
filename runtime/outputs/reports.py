"""A result's DICOM report, whichever kind the user chose: a coded TID 1500 SR or a Basic Text SR, as bytes of a
DICOM file (the output steps write them, whole and once)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from ..choices import SR_KINDS
from ..model.contract import Contract
from .coded_sr import build_coded_sr
from .sr import build_sr

__all__ = ["SR_KINDS", "render_report"]



def render_report(header: Any, record: Mapping[str, Any], contract: Contract, *, kind: str, model_name: str,
                  model_sha256: str, software_version: str) -> bytes:
    """The report of `record` for the image whose header is `header`, as a DICOM file's bytes."""
    import pydicom

    if kind == "basic":
        report = build_sr(header, label=record["label"], probabilities=record["probabilities"],
                          model_name=model_name, model_sha256=model_sha256, software_version=software_version,
                          warnings=record["warnings"], status=record.get("status", "classified"),
                          finding=record.get("finding"), finding_probability=record.get("finding_probability"))
    else:
        report = build_coded_sr(header, record, contract, model_name=model_name, model_sha256=model_sha256,
                                software_version=software_version)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, report, enforce_file_format=True)
    return buffer.getvalue()
