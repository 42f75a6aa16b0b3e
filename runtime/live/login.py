"""The status page's login: one secret token per site, stored only as a salted scrypt hash.

`cxr-edge status-page-token FILE` makes a token, prints it once, and writes its hash to FILE (0600): the token
itself is never stored and never on a command line (where `ps` and shell histories would keep it). The page asks
for it as HTTP Basic authentication (any user name, the token as password), which every browser shows as its own
login box, so the read-only page needs no form; scripts may send it as a bearer token instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
from pathlib import Path

from ..errors import CxrEdgeError
from ..files import fit_name, make_private, utc_now

__all__ = ["Login", "make_token", "SCRYPT"]

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
"""scrypt's cost: about 50 ms and 16 MB per check, so that a stolen hash cannot be tried fast."""


def make_token(path: str | Path) -> str:
    """A new random token; its hash replaces `path`'s (which is created 0600). Returns the token, to be shown
    once."""
    token = secrets.token_urlsafe(24)
    salt = secrets.token_bytes(16)
    record = {"scheme": "scrypt", **SCRYPT, "salt": salt.hex(), "hash": _digest(token, salt, SCRYPT).hex(),
              "created": utc_now()}
    path = Path(path)
    temp = path.with_name(fit_name(f".{path.name}.new"))
    temp.write_text(json.dumps(record, indent=2) + "\n")
    make_private(temp)
    temp.replace(path)
    return token


def _digest(token: str, salt: bytes, cost: dict) -> bytes:
    return hashlib.scrypt(token.encode(), salt=salt, n=cost["n"], r=cost["r"], p=cost["p"], dklen=32)


class Login:
    """Checks an ``Authorization`` header against a stored token hash.

    A header once verified is remembered (its SHA-256, in memory), so that the page's many requests (an event
    stream, thumbnails) cost one scrypt, not one each.
    """

    def __init__(self, path: str | Path) -> None:
        try:
            record = json.loads(Path(path).read_text())
            self.salt, self.hash = bytes.fromhex(record["salt"]), bytes.fromhex(record["hash"])
            self.cost = {k: int(record[k]) for k in SCRYPT}
        except (OSError, ValueError, KeyError) as exc:
            raise CxrEdgeError(f"{path}: not a status page token file (make one with `cxr-edge status-page-token "
                               f"{path}`)") from exc
        self._known: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, header: str | None) -> str:
        """``accepted`` (the right token, checked now), ``known`` (checked before) or ``refused``, for
        ``Basic base64(user:token)`` or ``Bearer token``."""
        token = _token_of(header)
        if token is None:
            return "refused"
        seen = hashlib.sha256(token.encode()).digest()
        with self._lock:
            if seen in self._known:
                return "known"
        if not hmac.compare_digest(_digest(token, self.salt, self.cost), self.hash):
            return "refused"
        with self._lock:
            self._known.add(seen)
        return "accepted"


def _token_of(header: str | None) -> str | None:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None
