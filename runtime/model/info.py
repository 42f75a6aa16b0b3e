"""What a model file holds, for `cxr-edge info`: contract, gate policy, provenance, engines and hashes, and its
tables."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .backends import open_backend
from .contract import Contract
from .gate import GatePolicy
from .model_file import (
    ARCHITECTURE_KEY,
    CONTRACT_KEY,
    GATE_KEY,
    PROVENANCE_KEY,
    QUANTIZATION_KEY,
    VERSION_KEY,
    engines_for,
    file_sha256,
    model_files,
    model_format,
    reader_engine,
    resolve_model,
)

__all__ = ["model_info", "render_info"]


def model_info(path: str | Path | None) -> dict:
    """Contract, provenance and SHA-256 of every file of a model; a model without a contract is refused."""
    model_path = resolve_model(path)
    fmt = model_format(model_path)
    opened = open_backend(model_path, reader_engine(fmt).name)
    metadata = opened.io.metadata
    contract = Contract.from_metadata(metadata)
    try:
        provenance = json.loads(metadata.get(PROVENANCE_KEY, "{}"))
    except json.JSONDecodeError:
        provenance = {"unreadable": metadata[PROVENANCE_KEY]}
    policy = GatePolicy.from_metadata(metadata)
    other = {k: v for k, v in metadata.items() if k not in (CONTRACT_KEY, VERSION_KEY, PROVENANCE_KEY, GATE_KEY)}
    return {
        "model": {"path": str(model_path), "format": fmt, "architecture": metadata.get(ARCHITECTURE_KEY, "unknown"),
                  "precision": "int8" if QUANTIZATION_KEY in metadata else "fp32",
                  "engines": [e.name for e in engines_for(fmt)],
                  "inputs": list(opened.io.input_shape), "outputs": list(opened.io.outputs),
                  "format_version": metadata.get(VERSION_KEY)} | ({"metadata": other} if other else {}),
        "contract": contract.to_dict(),
        "gate": asdict(policy) if policy else None,
        "provenance": provenance,
        "files": {str(f): {"bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in model_files(model_path)},
    }


def render_info(details: dict, console: Any) -> None:
    """`model_info` as one two-column table per section, values folded to the terminal's width."""
    from rich.table import Table
    from rich.text import Text

    for section in ("model", "contract", "gate", "provenance", "files"):
        values = details.get(section) or {"(none recorded)": "" if section != "gate" else
                                          "this model has no gate: every readable input gets a label"}
        table = Table(title=section, title_justify="left", show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in values.items():
            table.add_row(Text(str(key)), Text(value if isinstance(value, str) else json.dumps(value)))
        console.print(table)
