"""From what a user typed to an ordered list of files, with a reason for every argument that names none.

Nothing here raises for a path: a symbolic-link loop, a folder that cannot be listed, a name longer than the system
allows become `InputError` entries beside the files that are fine, and the file readers name each problem later.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import os_reason
from .images import IMAGE_SUFFIXES

__all__ = ["InputError", "expand_inputs"]


@dataclass(frozen=True)
class InputError:
    """A path argument that names no readable input (missing, empty folder, glob without matches)."""

    path: str
    reason: str


def _is_candidate(path: Path) -> bool:
    """Files a folder walk picks up: image suffixes, plus files without one (PACS exports often lack it)."""
    return not path.name.startswith(".") and (path.suffix.lower() in IMAGE_SUFFIXES or path.suffix == "")


def expand_inputs(specs: Sequence[str], *, recursive: bool = False) -> list[Path | InputError]:
    """Turn command-line arguments into an ordered list of files, keeping a reason for each that names none.

    Nothing here raises for a path: a symbolic-link loop, a folder that cannot be listed, a name longer than the
    system allows become `InputError` entries beside the files that are fine.

    Args:
        specs: files, folders and glob patterns (patterns the shell did not expand, e.g. quoted).
        recursive: descend into subfolders of folders (and let ``**`` in patterns match them). Links to folders
            are followed, each real folder once, so a link that points back up cannot loop.
    """
    items: list[Path | InputError] = []
    for spec in specs:
        try:
            info = os.stat(spec)
        except OSError as exc:
            if glob.has_magic(spec) and isinstance(exc, FileNotFoundError):
                matches = sorted(Path(m) for m in glob.glob(spec, recursive=recursive) if _is_file(m))
                items += matches or [InputError(spec, "no files match this pattern")]
            else:
                items.append(InputError(spec, os_reason(exc, spec)))
            continue
        if stat.S_ISDIR(info.st_mode):
            found = _walk(Path(spec), recursive)
            items += found if any(isinstance(f, Path) for f in found) else (
                found or [InputError(spec, "folder holds no image files")])
        else:
            items.append(Path(spec))
    return items


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return os.path.islink(path)  # a broken or looping link: kept, so that it gets its own error line


def _walk(top: Path, recursive: bool) -> list[Path | InputError]:
    """Image files under `top` in name order, with an entry for every folder or link that could not be read."""
    found: list[Path | InputError] = []
    seen: set[tuple[int, int]] = set()
    pending = [top]
    while pending:
        folder = pending.pop()
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            found.append(InputError(str(folder), f"folder not read: {os_reason(exc, folder)}"))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError as exc:
                if _is_candidate(Path(entry.path)):
                    found.append(InputError(entry.path, os_reason(exc, entry.path)))
                continue
            if is_dir:
                subfolders.append(Path(entry.path))
            elif _is_candidate(Path(entry.path)) and (is_file or entry.is_symlink()):
                found.append(Path(entry.path))  # a broken link is kept: reading it names the problem
        if recursive:
            pending.extend(reversed(subfolders))
    return sorted(found, key=lambda item: Path(item.path).parts if isinstance(item, InputError) else item.parts)
