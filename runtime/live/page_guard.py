"""Who may see the status page, and what every answer of it carries: the login, the security headers, the rule that
a page served beyond this machine needs HTTPS and a login.

The page shows results of patients (never their names, but their studies' results), so on any address other than
loopback it refuses to start without the site's certificate and a login, unless the user says `--insecure`, which
is then written in the log, on the page and in the audit trail. It is read-only: no form, no state to change, so
the login is HTTP authentication and the page forbids being framed, sniffed or cached.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import CxrEdgeError

__all__ = ["Guard", "check_exposure", "SECURITY_HEADERS", "is_loopback"]

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; "
                               "form-action 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
"""Sent with every answer; heatmaps, which never change, replace only the cache rule."""

HSTS = "max-age=31536000"


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, *, https: bool, login: bool, insecure: bool) -> None:
    """Refuse a page served beyond loopback without HTTPS and a login, unless `insecure` says otherwise."""
    if is_loopback(host) or (https and login):
        return
    missing = " and ".join(what for what, have in (("--tls-cert/--tls-key", https), ("--login", login)) if not have)
    if not insecure:
        raise CxrEdgeError(f"the status page would serve results to the network on {host or 'every address'} "
                           f"without {missing}; give them (see `cxr-edge status-page-token`), serve on 127.0.0.1, "
                           "or say --insecure")
    log.warning("INSECURE: the status page serves results on %s without %s (--insecure)", host or "every address",
                missing)


class Guard:
    """ASGI middleware: HTTP authentication against a `login.Login` (when given), and the security headers.

    Args:
        app: the page's application.
        login: checks the ``Authorization`` header; None lets everyone in (loopback, or `--insecure`).
        https: served over TLS (adds Strict-Transport-Security).
        on_login: called with (accepted, peer address) for each fresh check (not for the remembered ones).
    """

    def __init__(self, app: Any, login: Any = None, *, https: bool = False,
                 on_login: Callable[[bool, str], None] | None = None) -> None:
        self.app, self.login, self.https, self.on_login = app, login, https, on_login

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.login is not None and not await self._allowed(scope):
            await self._deny(send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-frame-options"]
                present = {k.lower() for k, _ in headers}
                headers += [(k.encode(), v.encode()) for k, v in self._headers().items() if k.encode() not in present]
                message = message | {"headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)

    def _headers(self) -> dict[str, str]:
        return SECURITY_HEADERS | ({"strict-transport-security": HSTS} if self.https else {})

    async def _allowed(self, scope: dict) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1") or None
        verdict = await asyncio.to_thread(self.login.check, header)
        if verdict != "known" and self.on_login is not None and header is not None:
            client = scope.get("client") or ("?", 0)
            self.on_login(verdict == "accepted", str(client[0]))
        return verdict in ("accepted", "known")

    async def _deny(self, send: Callable[[dict], Awaitable[None]]) -> None:
        headers = [(k.encode(), v.encode()) for k, v in self._headers().items()]
        headers += [(b"www-authenticate", b'Basic realm="cxr-edge status", charset="UTF-8"'),
                    (b"content-type", b"text/plain; charset=utf-8")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": b"the status page needs its login\n"})
