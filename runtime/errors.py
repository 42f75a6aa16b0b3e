"""The exception types of cxr-edge: one base class, so the CLI turns every expected failure into one line."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["CxrEdgeError", "ImageError", "ContractError", "ModelError", "first_line"]


class CxrEdgeError(Exception):
    """An expected failure with a message fit for a user: the CLI prints it as one line, without a traceback."""


class ImageError(CxrEdgeError):
    """One input file cannot be used; names the file and the exact reason.

    Args:
        path: the file that failed.
        reason: why, in words a radiographer or IT person can act on.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ContractError(CxrEdgeError):
    """A preprocessing contract is missing, malformed or of a format this version does not understand."""


class ModelError(CxrEdgeError):
    """A model file cannot be opened or does not fit the runtime (not ONNX, wrong inputs, no contract)."""


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ (?:object|at) [^>]*0x[0-9a-fA-F]+>")
"""``<_io.BytesIO object at 0x7ff5...>``: what libraries print for the in-memory file they were handed."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of a library's exception text: enough to act on, short enough for a one-line error.

    Object representations (memory addresses of buffers) are dropped: they mean nothing to a user and differ at
    every run.
    """
    lines = [_OBJECT_REPR.sub("", line).strip() for line in str(exc).strip().splitlines()]
    lines = [line for line in lines if line]
    return lines[0][:limit] if lines else type(exc).__name__
