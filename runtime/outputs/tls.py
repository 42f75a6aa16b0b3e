"""TLS for every network face: the DICOM node (PS3.15 Annex B, the secure transport profile), forwarding to a PACS,
the status page and the remote engine, from certificates the site gives.

One rule for all of them: TLS 1.2 or newer, certificates checked (a server's against the CA given, a client's
where the server asks for them), and no anonymous or null ciphers: a connection that is encrypted but not
authenticated protects nothing against the party in the middle.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import CxrEdgeError

__all__ = ["server_context", "client_context", "CIPHERS"]

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!MD5:!RC4:!3DES"
"""TLS 1.2 suites with forward secrecy and authenticated encryption; never anonymous (aNULL) or null (eNULL).
TLS 1.3 suites are all authenticated and stay as OpenSSL offers them."""


def _checked(path: str | Path, what: str) -> str:
    if not Path(path).is_file():
        raise CxrEdgeError(f"{what} {path}: no such file")
    return str(path)


def server_context(cert: str | Path, key: str | Path, ca: str | Path | None = None) -> ssl.SSLContext:
    """A server's TLS: its certificate and key; with `ca`, clients must present a certificate that CA signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    try:
        context.load_cert_chain(_checked(cert, "TLS certificate"), _checked(key, "TLS key"))
        if ca is not None:
            context.load_verify_locations(_checked(ca, "TLS CA"))
            context.verify_mode = ssl.CERT_REQUIRED
    except ssl.SSLError as exc:
        raise CxrEdgeError(f"TLS certificate {cert} or key {key}: {exc.reason or exc}") from exc
    return context


def client_context(ca: str | Path | None = None, cert: str | Path | None = None,
                   key: str | Path | None = None) -> ssl.SSLContext:
    """A client's TLS: the server's certificate checked against `ca` (the system's CAs without it) and its name
    against the host; with `cert` and `key`, this client's own certificate for servers that ask for one."""
    try:
        context = ssl.create_default_context(cafile=_checked(ca, "TLS CA") if ca is not None else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(CIPHERS)
        if cert is not None:
            context.load_cert_chain(_checked(cert, "TLS certificate"),
                                    _checked(key, "TLS key") if key is not None else None)
    except ssl.SSLError as exc:
        raise CxrEdgeError(f"TLS CA {ca} or certificate {cert}: {exc.reason or exc}") from exc
    return context
