"""Writing a result's DICOM report, whichever kind the user chose: shared by the DICOM listener and the watched
folder (for DICOM inputs)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..files import write_atomic
from .coded_sr import build_coded_sr
from .sr import build_sr

__all__ = ["SR_KINDS", "write_report"]

SR_KINDS = ("tid1500", "basic")
"""``tid1500``: coded Comprehensive 3D SR (`coded_sr`); ``basic``: Basic Text SR (`sr`) for a PACS that cannot
show TID 1500."""


def write_report(header: Any, record: dict[str, Any], path: Path, *, kind: str, model_name: str, model_sha256: str,
                 software_version: str) -> None:
    """Build the report of `record` for the image whose header is `header`, and write it (whole, once)."""
    import pydicom

    if kind == "basic":
        report = build_sr(header, label=record["label"], probabilities=record["probabilities"],
                          model_name=model_name, model_sha256=model_sha256, software_version=software_version,
                          warnings=record["warnings"], status=record.get("status", "classified"))
    else:
        report = build_coded_sr(header, status=record.get("status", "classified"), label=record["label"],
                                probabilities=record["probabilities"],
                                gate_score=(record.get("gate") or {}).get("score"), model_name=model_name,
                                model_sha256=model_sha256, software_version=software_version,
                                warnings=record["warnings"])
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, report, enforce_file_format=True)
    write_atomic(path, buffer.getvalue())
