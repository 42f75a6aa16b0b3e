"""Crash-safe file steps shared by the live modes: atomic writes and moves that never overwrite.

Every step either happens whole or not at all (temporary name, fsync, then a hard link to the final name), and
each step checks whether an earlier, interrupted run already did it, so that a restart can simply repeat the
sequence. Hard links are used instead of ``os.rename`` because rename silently replaces an existing file, and
nothing a user gave us may be overwritten.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["TEMP_PREFIX", "write_atomic", "write_json_atomic", "json_bytes", "move_to", "free_name", "fit_name",
           "remove_stale_temps", "replace_json", "same_file", "utc_now", "fsync_dir"]

TEMP_PREFIX = ".cxr-edge-"
"""Files being written carry this prefix; a restart deletes leftovers (they were never complete)."""


def utc_now() -> str:
    """Wall-clock time for records: ISO 8601, UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> bool:
    """Write `data` to `path` whole and durably, unless `path` already exists.

    Returns True if written, False if the file was already there (an earlier run wrote it; it is left alone).
    """
    temp = path.parent / fit_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def replace_json(path: Path, record: dict, *, best_effort: bool = False) -> None:
    """Replace a status or cache file whole (rename over it), so a reader never sees half of it. Not synced: a
    status is rewritten every few seconds and a lost one is replaced by the next; a cache entry that fails to land
    only makes the next start slower (`best_effort` then swallows the error). Results use `write_atomic`, which
    makes the opposite promises: never replaces, durable before it returns."""
    temp = path.parent / fit_name(f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        temp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(temp, path)
    except OSError:
        if not best_effort:
            raise
    finally:
        temp.unlink(missing_ok=True)


def json_bytes(record: dict) -> bytes:
    """A JSON object as a file's bytes (UTF-8, indented, ending in a newline).

    File names that are not valid UTF-8 reach here as lone surrogates; those records are written with
    ``\\u`` escapes instead, which every JSON reader accepts.
    """
    try:
        return (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode()
    except UnicodeEncodeError:
        return (json.dumps(record, indent=2) + "\n").encode()


def write_json_atomic(path: Path, record: dict) -> bool:
    """`write_atomic` of a JSON object (`json_bytes`)."""
    return write_atomic(path, json_bytes(record))


def same_file(a: Path, b: Path) -> bool:
    """Both names exist and are one file (a link step completed but its unlink did not)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


NAME_MAX = 255
"""Longest file name in bytes on Linux filesystems."""


def fit_name(name: str, reserve: int = 0) -> str:
    """`name` shortened (in the middle of its stem, keeping the extension) to leave `reserve` bytes free."""
    limit = NAME_MAX - reserve
    if len(os.fsencode(name)) <= limit:
        return name
    stem, dot, ext = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    tail = os.fsencode(dot + ext)[: limit // 4]
    head = os.fsencode(stem)[: limit - len(tail) - 1]
    return os.fsdecode(head.decode("utf-8", "ignore").encode() + b"~" + tail) if head else os.fsdecode(tail)


def free_name(folder: Path, name: str, *, companions: tuple[str, ...] = ()) -> str:
    """`name`, or ``stem (2).ext``, ``stem (3).ext``...: the first one that is free in `folder`.

    Args:
        folder: where the file will go.
        name: the wanted name (shortened if it and its companions would exceed the filesystem's limit).
        companions: suffixes of files that travel with it (``.reason.txt``); those names must be free too.
    """
    reserve = max((len(c) for c in companions), default=0) + 8  # room for " (NNNN)"
    name = fit_name(name, reserve)
    stem, dot, ext = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    candidate, n = name, 1
    while any((folder / (candidate + c)).exists() for c in ("", *companions)):
        n += 1
        candidate = f"{stem} ({n}){dot}{ext}"
    return candidate


def move_to(source: Path, target: Path) -> Path:
    """Move `source` to exactly `target` without ever replacing another file.

    Repeating a move that was interrupted is safe: if `target` is already the same file, only the old name is
    removed. Across filesystems the data is copied and synced first.

    Raises:
        FileExistsError: `target` is a different file.
    """
    if same_file(source, target):
        source.unlink()
        return target
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        temp = target.parent / fit_name(f"{TEMP_PREFIX}{os.getpid()}-{target.name}")
        try:
            shutil.copyfile(source, temp)
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.link(temp, target)
        finally:
            temp.unlink(missing_ok=True)
    fsync_dir(target.parent)
    source.unlink()
    fsync_dir(source.parent)
    return target


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files an interrupted run left in `folder`; returns how many."""
    count = 0
    for path in folder.glob(f"{TEMP_PREFIX}*"):
        path.unlink(missing_ok=True)
        count += 1
    return count
