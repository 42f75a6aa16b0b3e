"""DICOMweb out: STOW-RS, for PACS and clouds that take objects over HTTP rather than C-STORE.

A `WebDestination` sits in the same durable outbox as a C-STORE destination (`outbox`), with the same backoff and
the same per-object refusal: `store` posts one object (``multipart/related; type="application/dicom"`` to
``{base}/studies``), returns None when the server stored it, a reason when it refused that object for what it is
(HTTP 400, 409 or a failed SOP in its answer), and raises `WebUnreachable` when it could not take anything now
(no connection, a timeout, HTTP 5xx or 429), so that the object stays pending.
"""

from __future__ import annotations

import json
import re
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CxrEdgeError

__all__ = ["WebDestination", "WebUnreachable", "parse_web_destination", "store"]

TIMEOUT_S = 30.0
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class WebUnreachable(Exception):
    """The DICOMweb server cannot take objects now; everything stays pending."""


@dataclass(frozen=True)
class WebDestination:
    """A DICOMweb service root (``https://pacs/dicom-web``) and the TLS context to reach it with."""

    url: str
    tls: Any = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        """A folder name for this destination."""
        return re.sub(r"[^A-Za-z0-9.\-]", "_", "stow_" + self.url.split("://", 1)[-1])[:120]

    def __str__(self) -> str:
        return f"STOW-RS {self.url}"


def parse_web_destination(text: str, tls: Any = None) -> WebDestination:
    """A ``--stow`` URL -> `WebDestination`; a clear error for anything that is not http(s)://host/path."""
    url = text.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise CxrEdgeError(f"--stow {text!r}: expected a DICOMweb service root, e.g. https://pacs/dicom-web")
    if url.startswith("http://") and tls is not None:
        raise CxrEdgeError(f"--stow {text!r}: the TLS options need an https:// URL")
    return WebDestination(url, tls)


def store(destination: WebDestination, path: Path) -> str | None:
    """Post one DICOM file; None when stored, else why the server refused it. Raises `WebUnreachable`."""
    import urllib.error
    import urllib.request

    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(f"{destination.url}/studies", data=body, method="POST", headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    context = destination.tls if isinstance(destination.tls, ssl.SSLContext) else None
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as answer:
            return _failed(answer.read())
    except urllib.error.HTTPError as exc:
        if exc.code in RETRY_STATUSES:
            raise WebUnreachable(f"{destination}: HTTP {exc.code}") from exc
        return f"HTTP {exc.code} {exc.reason}" + (f": {reason}" if (reason := _failed(exc.read())) else "")
    except (urllib.error.URLError, OSError) as exc:
        raise WebUnreachable(f"{destination}: {getattr(exc, 'reason', exc)}") from exc


def _failed(answer: bytes) -> str | None:
    """The failure reason of a STOW-RS answer (its Failed SOP Sequence), or None when nothing failed."""
    try:
        dataset = json.loads(answer or b"{}")
    except ValueError:
        return None
    failed = (dataset.get("00081198") or {}).get("Value") or []
    if not failed:
        return None
    reason = (failed[0].get("00081197") or {}).get("Value") or ["?"]
    return f"the server's failure reason {reason[0]}"
