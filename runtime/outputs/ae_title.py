"""Application Entity titles as DICOM defines them: shared by the listener (who may call) and the outbox (whom
it calls)."""

from __future__ import annotations

__all__ = ["valid_ae_title"]


def valid_ae_title(title: str) -> str | None:
    """Why `title` is not a valid AE title (PS3.5 6.2), or None. Leading and trailing spaces do not count."""
    core = title.strip(" ")
    if not core:
        return "it is empty"
    if len(core) > 16:
        return f"it has {len(core)} characters (at most 16)"
    if any(not " " <= c <= "~" or c == "\\" for c in core):
        return "it holds a backslash, a control character or a character outside ASCII"
    return None
