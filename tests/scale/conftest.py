"""A real Triton server on 127.0.0.1 for the remote-engine tests, from PyTriton in its own environment."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

SERVER_SCRIPT = Path(__file__).resolve().parent.parent / "serving" / "pytriton_server.py"


def triton_python() -> str:
    """PyTriton's interpreter: $CXR_EDGE_TRITON_PYTHON (``make test`` sets it), else ``.venv-triton``."""
    python = os.environ.get("CXR_EDGE_TRITON_PYTHON") or str(REPO / ".venv-triton" / "bin" / "python")
    if not Path(python).exists():
        pytest.fail(f"{python} not found: `make test` creates PyTriton's environment (.venv-triton)")
    return python


def free_port_block(size: int = 3) -> int:
    """A port with the next `size` - 1 free too (HTTP, gRPC, metrics)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size < 65536 and all(_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no free block of ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class TritonServer:
    """tritonserver serving one ONNX model; `stop` kills it (the down-server tests call it mid-run)."""

    def __init__(self, model: Path, name: str = "cxr-edge") -> None:
        python = triton_python()
        libdir = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True, check=True).stdout.strip()
        self.port = free_port_block()
        env = os.environ | {"LD_LIBRARY_PATH": f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"cxr-edge-triton-{self.port}.log", "w+")
        self.process = subprocess.Popen([python, str(SERVER_SCRIPT), str(model), str(self.port), "--name", name],
                                        stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready(name)

    def _wait_ready(self, name: str, timeout: float = 120) -> None:
        import tritonclient.http as http

        deadline = time.monotonic() + timeout
        client = http.InferenceServerClient(f"127.0.0.1:{self.port}")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if client.is_model_ready(name):
                    return
            except Exception:
                pass
            time.sleep(0.5)
        self.log.seek(0)
        tail = self.log.read()[-2000:]
        self.stop()
        pytest.fail(f"tritonserver did not come up on port {self.port}:\n{tail}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    from cxr_edge.runtime.model.model_file import MODELS_DIR, SHIPPED_INT8

    server = TritonServer(MODELS_DIR / SHIPPED_INT8)
    yield server
    server.stop()
