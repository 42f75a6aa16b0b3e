"""Where an artefact came from: package version and git commit, recorded in checkpoints and model metadata."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["package_version", "git_commit", "set_onnx_metadata"]


def package_version() -> str:
    from cxr_edge import __version__

    return __version__


def git_commit() -> str | None:
    """The source tree's commit (with ``-dirty`` when it has uncommitted changes), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def set_onnx_metadata(proto: object, metadata: dict[str, str]) -> None:
    """Replace an ONNX model's ``metadata_props`` with exactly these key/value strings."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
