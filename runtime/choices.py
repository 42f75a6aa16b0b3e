"""The choices a user names on the command line, defined once where the CLI can read them without loading numpy,
OpenCV or pydicom (``cxr-edge --help`` stays instant) and the runtime reads them too."""

from __future__ import annotations

__all__ = ["GATE_MODES", "STATUSES", "SR_KINDS", "OUTPUT_FORMATS"]

GATE_MODES = ("reject", "warn", "off")
"""``reject``: a rejected input gets no label; ``warn``: it keeps its label with a warning; ``off``: no gate."""

STATUSES = ("classified", "uncertain", "rejected", "failed")
"""What a result can be (`cxr_edge.runtime.model.gate`)."""

SR_KINDS = ("tid1500", "basic")
"""``tid1500``: a coded Comprehensive 3D SR (`cxr_edge.runtime.outputs.coded_sr`); ``basic``: a Basic Text SR
(`cxr_edge.runtime.outputs.sr`) for a PACS that cannot show TID 1500."""

OUTPUT_FORMATS = ("table", "jsonl", "csv")
"""How `predict` prints its results (`cxr_edge.runtime.outputs.table`)."""
