"""The exception types of cxr-edge: one base class, so the CLI turns every expected failure into one line."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

__all__ = ["CxrEdgeError", "ImageError", "ContractError", "ModelError", "InferenceError", "first_line", "os_reason",
           "printable"]


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


class InferenceError(CxrEdgeError):
    """An engine could not run one batch (a remote server gone or timing out): each image of the batch fails
    with this reason, and the run goes on."""


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


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""Control characters (ESC starts terminal commands), bidirectional overrides (they reorder what a reader sees)
and lone surrogates (bytes of a file name that are not UTF-8, as Python decodes them)."""


def printable(text: object) -> str:
    """`text` safe for a terminal or a log: control characters shown as escapes (``\\x1b``), so that a file name
    cannot move the cursor, recolour or clear the screen, and undecodable bytes of a file name as ``\\xff``."""

    def escaped(match: re.Match[str]) -> str:
        code = ord(match.group())
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
            return f"\\x{code - 0xDC00:02x}"
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNPRINTABLE.sub(escaped, str(text))


def os_reason(exc: OSError, path: str | os.PathLike[str]) -> str:
    """A file-system failure in words, for the one line that names `path`."""
    reasons = {errno.ENOENT: "no such file or folder", errno.ELOOP: "symbolic link loop",
               errno.ENAMETOOLONG: "path is too long for this system", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOTDIR: "a part of the path is not a folder",
               errno.EIO: "input/output error (a failing disk or network share)"}
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return "broken symbolic link: no such file at its target"
    return reasons.get(exc.errno or 0, exc.strerror or first_line(exc))
