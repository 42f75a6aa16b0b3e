"""Loopback helpers shared by the live-mode tests and the live benchmarks: a free port, and waiting until a
DICOM listener answers C-ECHO."""

from __future__ import annotations

import socket
import subprocess
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification

__all__ = ["free_port", "wait_for_echo"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_echo(port: int, process: subprocess.Popen, *, ae_title: str = "TESTSCU", timeout: float = 60) -> None:
    """Return once the listener `process` started answers C-ECHO on `port`; fail if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        ae = AE(ae_title=ae_title)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="CXREDGE")
        if assoc.is_established:
            assoc.release()
            return
        if time.monotonic() >= deadline or process.poll() is not None:
            raise RuntimeError(f"the listener on port {port} did not start")
        time.sleep(0.2)
