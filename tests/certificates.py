"""Certificates the tests make with the openssl command (Debian's, beside dcmtk): a CA, and server or client
certificates it signs for 127.0.0.1, so that TLS is tested with real handshakes, never switched off."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Authority", "Issued"]


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Authority:
    """A certificate authority in `folder`, signing certificates for 127.0.0.1 and localhost."""

    def __init__(self, folder: Path, name: str = "cxr-edge test CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = folder / "ca.pem", folder / "ca.key"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                 "-keyout", self.key, "-out", self.cert)

    def issue(self, name: str) -> Issued:
        key, request, cert = (self.folder / f"{name}.{s}" for s in ("key", "csr", "pem"))
        extensions = self.folder / f"{name}.ext"
        extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key, "-out", request)
        _openssl("x509", "-req", "-in", request, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial",
                 "-days", "2", "-extfile", extensions, "-out", cert)
        return Issued(cert, key)


def _openssl(*args: object) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
