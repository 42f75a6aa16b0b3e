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
    """`model_info` as readable key/value lines, one block per section: numbers rounded, lists joined, the classes
    with their names and codes; the whole record, unrounded, is `cxr-edge info --json`."""
    from rich.table import Table
    from rich.text import Text

    for section in ("model", "contract", "gate", "provenance", "files"):
        values = _section(section, details.get(section))
        table = Table(title=section, title_justify="left", title_style="bold", show_header=False, box=None,
                      padding=(0, 1))
        table.add_column("key", style="cyan", no_wrap=True)
        table.add_column("value", overflow="fold")
        for key, value in values:
            table.add_row(Text(key), Text(value))
        console.print(table)


def _section(name: str, values: dict | None) -> list[tuple[str, str]]:
    if not values:
        return [("(none)", "this model has no gate: every readable input gets a label" if name == "gate" else
                 "none recorded")]
    if name == "contract":
        return _contract_lines(values)
    return _nested(values, 0)


def _nested(values: dict, depth: int) -> list[tuple[str, str]]:
    """Key/value lines, a mapping (or a JSON object stored as text) opening indented lines of its own."""
    lines = []
    for key, value in values.items():
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if isinstance(value, dict) and value and depth < 3:
            lines += [("  " * depth + str(key), "")] + _nested(value, depth + 1)
        else:
            lines.append(("  " * depth + str(key), _readable(value)))
    return lines


def _contract_lines(contract: dict) -> list[tuple[str, str]]:
    """The contract, its classes and findings spelt out: name, display name and code."""
    plain = {k: v for k, v in contract.items() if k not in ("class_names", "display_names", "codes", "findings")}
    lines = [(key, _readable(value)) for key, value in plain.items()]
    for name, display, code in zip(contract["class_names"], contract["display_names"], contract["codes"],
                                   strict=True):
        lines.append((f"class {name}", f"{display} ({code[1]} {code[0]})"))
    for finding in contract.get("findings") or ():
        value, scheme, _ = finding["code"]
        lines.append((f"finding {finding['name']}", f"{' + '.join(finding['classes'])} ({scheme} {value})"))
    return lines


def _readable(value: Any) -> str:
    """A value as a person reads it: floats to four significant digits, lists joined, mappings as key=value."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join("any" if v is None else _readable(v) for v in value) if value else "(none)"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_readable(v)}" for k, v in value.items()) if value else "(none)"
    return "" if value is None else str(value)
