"""Crash-safe, private file steps shared by every writer: atomic writes and moves that never overwrite.

Every step either happens whole or not at all (temporary name, fsync, then a hard link to the final name), and
each step checks whether an earlier, interrupted run already did it, so that a restart can simply repeat the
sequence. Hard links are used instead of ``os.rename`` because rename silently replaces an existing file, and
nothing a user gave us may be overwritten.

Everything written here holds patient data or may: a received film, a report that copies the patient module, a
record with ``--keep-phi``. So every folder made here is 0700 and every file 0600, whatever the umask; `share_with`
opens them to one group (0750 and 0640), never to others.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["TEMP_PREFIX", "write_atomic", "write_json_atomic", "json_bytes", "move_to", "free_name", "fit_name",
           "remove_stale_temps", "replace_json", "same_file", "utc_now", "fsync_dir", "share_with", "private_dir",
           "make_private", "file_mode", "dir_mode", "warn_if_open", "replace_bytes"]

log = logging.getLogger(__name__)

_SHARED = {"gid": None}
"""The group outputs are opened to (`share_with`), or None: owner only."""


def share_with(group: str | None) -> None:
    """Open every folder and file written from now on to `group` (read, and enter folders), never to others."""
    import grp

    from .errors import CxrEdgeError

    if group is None:
        _SHARED["gid"] = None
        return
    try:
        _SHARED["gid"] = grp.getgrnam(group).gr_gid
    except KeyError:
        raise CxrEdgeError(f"--group {group}: no such group on this machine") from None


def file_mode() -> int:
    return 0o640 if _SHARED["gid"] is not None else 0o600


def dir_mode() -> int:
    return 0o750 if _SHARED["gid"] is not None else 0o700


def make_private(path: Path | int) -> None:
    """Give a file (or an open descriptor) the private mode and, with `share_with`, the group; the umask cannot
    widen it."""
    chmod, chown = (os.fchmod, os.fchown) if isinstance(path, int) else (os.chmod, os.chown)
    chmod(path, file_mode())
    if _SHARED["gid"] is not None:
        chown(path, -1, _SHARED["gid"])


def private_dir(path: Path) -> Path:
    """`path` as a folder, every component made here created private (0700, or 0750 for the shared group);
    folders that were already there keep their mode (see `warn_if_open`)."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(folder, dir_mode())
        if _SHARED["gid"] is not None:
            os.chown(folder, -1, _SHARED["gid"])
    return path


def warn_if_open(folder: Path) -> bool:
    """Say once at start when an existing output folder lets others in (its results hold patient data)."""
    try:
        mode = stat.S_IMODE(folder.stat().st_mode)
    except OSError:
        return False
    if mode & 0o007:
        log.warning("%s is open to others (mode %o): what is written there holds patient data; run chmod o-rwx "
                    "on it (or give --group to share it with one group)", folder, mode)
        return True
    return False

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
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
            make_private(handle.fileno())
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
    replace_bytes(path, (json.dumps(record, indent=2) + "\n").encode(), best_effort=best_effort)


def replace_bytes(path: Path, data: bytes, *, best_effort: bool = False) -> None:
    """Replace a file whole (rename over it), private; see `replace_json`."""
    temp = path.parent / fit_name(f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            make_private(handle.fileno())
            handle.write(data)
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
        make_private(source)  # a received or dropped film holds patient data; the link keeps the mode
    except OSError:
        pass  # a file on a filesystem without modes (a share) keeps what it has; its folder is private
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        temp = target.parent / fit_name(f"{TEMP_PREFIX}{os.getpid()}-{target.name}")
        try:
            shutil.copyfile(source, temp)
            make_private(temp)
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
