"""A remote engine: inference on a server that speaks the KServe v2 / Open Inference Protocol (NVIDIA Triton,
OpenVINO Model Server), through ``tritonclient``'s HTTP client.

Only the network runs remotely. Decoding, preprocessing by the contract, the gate, outputs and DICOM stay
here, and the local model file supplies the contract. On opening, the server's model metadata is checked against
that contract (input name, type and shape; the class count of ``probabilities``), so that images are never sent
to a model that would read them differently. Requests time out and are retried a bounded number of times; a
server that stays away fails the batch with `InferenceError` (each image gets the reason, the run goes on), and
later batches fail at once for `COOLDOWN_S` instead of each waiting for their own timeouts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from ...errors import InferenceError, ModelError, first_line
from ..model_file import INPUT_NAME, PROBABILITIES, model_format, reader_engine
from .base import ModelIO

__all__ = ["KServeBackend", "CONNECT_TIMEOUT_S", "REQUEST_TIMEOUT_S", "RETRIES", "COOLDOWN_S", "default_model_name"]

CONNECT_TIMEOUT_S = 5.0
"""Seconds to open a connection to the server."""

REQUEST_TIMEOUT_S = 30.0
"""Seconds a request may take: a batch of 32 on a busy CPU server takes well under one."""

RETRIES = 2
"""A failed request is retried this often (after 0.2 s, then 0.4 s): a restarting server or a dropped connection."""

COOLDOWN_S = 5.0
"""After a batch failed every retry, later batches fail at once for this long, then the server is tried again."""


def _authorization(token_file: str | Path | None, https: bool) -> dict[str, str] | None:
    """The bearer token's header; a token is never sent in clear text."""
    if token_file is None:
        return None
    if not https:
        raise ModelError("--token-file needs an https:// server: a token sent over plain HTTP is a token given away")
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise ModelError(f"--token-file {token_file}: {exc.strerror or exc}") from exc
    if not token:
        raise ModelError(f"--token-file {token_file}: the file is empty")
    return {"Authorization": f"Bearer {token}"}


def default_model_name(path: Path) -> str:
    """How `cxr-edge export-repository` names the model of this file: ``cxr-edge``, or ``cxr-edge-openvino``."""
    return "cxr-edge" if model_format(path) == "onnx" else "cxr-edge-openvino"


class KServeBackend:
    """A model served elsewhere, checked against the local model file's contract.

    Args:
        path: the local model file: its contract, gate policy and output shapes describe the served model.
        threads: unused (the server has its own).
        mode: unused (the server batches).
        server: ``http://host:port`` (or ``host:port``; ``https://`` for TLS, the server's certificate checked).
        model_name: the server's name for the model (default: `default_model_name`).
        token_file: a file holding a bearer token, sent with every request (over HTTPS only).
        server_ca: the CA (PEM) the server's HTTPS certificate is checked against (default: the system's).
    """

    name = "kserve"
    remote = True

    def __init__(self, path: Path, *, threads: int | None = None, mode: str = "latency", server: str,
                 model_name: str | None = None, token_file: str | Path | None = None,
                 server_ca: str | Path | None = None) -> None:
        from . import open_backend

        self.path = Path(path)
        self.server = server
        self.model_name = model_name or default_model_name(self.path)
        parsed = urlparse(server if "://" in server else f"http://{server}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
            raise ModelError(f"--server {server!r}: give http://HOST:PORT (the server's HTTP port)")
        self._url, self._ssl = f"{parsed.hostname}:{parsed.port}", parsed.scheme == "https"
        self._headers = _authorization(token_file, self._ssl)
        self._ca = str(server_ca) if server_ca is not None else None
        if self._ca is not None and not (self._ssl and Path(self._ca).is_file()):
            raise ModelError(f"--server-ca {server_ca}: needs an https:// server and an existing CA file")
        self._local = threading.local()  # tritonclient's HTTP client is gevent-based: one per thread
        self._down_until = 0.0
        local = open_backend(self.path, reader_engine(model_format(self.path)).name, threads=1)
        served = self._metadata()
        self._check(served, local.io)
        served_outputs = {o["name"] for o in served.get("outputs", [])}
        outputs = tuple(name for name in local.io.outputs if name in served_outputs)
        self.io = ModelIO((None, *local.io.input_shape[1:]), outputs, dict(local.io.metadata),
                          {n: s for n, s in local.io.output_shapes.items() if n in outputs})
        self.settings = {"engine": f"KServe v2 at {server}", "server": server, "model": self.model_name,
                         "versions": served.get("versions"), "platform": served.get("platform"),
                         "timeouts_s": {"connect": CONNECT_TIMEOUT_S, "request": REQUEST_TIMEOUT_S},
                         "retries": RETRIES}

    # --- opening -------------------------------------------------------------------------------------------
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.http as http

            options = {"ca_certs": self._ca} if self._ca is not None else None  # else the system's CAs
            client = http.InferenceServerClient(self._url, connection_timeout=CONNECT_TIMEOUT_S,
                                                network_timeout=REQUEST_TIMEOUT_S, ssl=self._ssl,
                                                ssl_options=options, insecure=False)
            self._local.client = client
        return client

    def _metadata(self) -> dict[str, Any]:
        try:
            live = self._client().is_server_live(headers=self._headers)
        except Exception as exc:
            raise ModelError(f"{self.server}: no inference server answers ({_reason(exc)})") from exc
        if not live:
            raise ModelError(f"{self.server}: {self._refusal()}")
        try:
            return self._client().get_model_metadata(self.model_name, headers=self._headers)
        except Exception as exc:
            raise ModelError(f"{self.server}: no model {self.model_name!r} is ready there ({_reason(exc)}); "
                             "give --model-name") from exc

    def _refusal(self) -> str:
        """Why a server answered but not 'live': a gateway refusing the token (HTTP 401 or 403), or not ready."""
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{self.server.rstrip('/')}/v2/health/live", headers=self._headers or {})
        context = None
        if self._ssl:
            import ssl

            context = ssl.create_default_context(cafile=str(self._ca) if self._ca else None)
        try:
            with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S, context=context) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except Exception as exc:
            return f"the server says it is not live ({first_line(exc)})"
        if status in (401, 403):
            return f"the server refused the request (HTTP {status}): check --token-file"
        return f"the server says it is not live (HTTP {status})"

    def _check(self, served: dict[str, Any], local: ModelIO) -> None:
        """Refuse a served model that would read images differently from the local contract."""
        where = f"{self.server} model {self.model_name!r}"
        inputs = served.get("inputs", [])
        if len(inputs) != 1 or inputs[0].get("name") != INPUT_NAME:
            raise ModelError(f"{where}: expected one input named {INPUT_NAME!r}, the server has "
                             f"{[i.get('name') for i in inputs]}")
        if inputs[0].get("datatype") != "FP32":
            raise ModelError(f"{where}: its input is {inputs[0].get('datatype')}, the contract's is FP32")
        shape = [int(d) for d in inputs[0].get("shape", [])]
        expected = [int(d) for d in local.input_shape[1:]]
        if len(shape) != len(expected) + 1 or any(s not in (-1, e) for s, e in zip(shape[1:], expected, strict=True)):
            raise ModelError(f"{where}: its input is {shape[1:]} per image, the local contract's {expected}")
        probabilities = next((o for o in served.get("outputs", []) if o.get("name") == PROBABILITIES), None)
        if probabilities is None:
            raise ModelError(f"{where}: it has no {PROBABILITIES!r} output")
        classes = int(probabilities.get("shape", [0])[-1])
        local_classes = (local.output_shapes.get(PROBABILITIES) or (None, classes))[-1]
        if classes != local_classes:
            raise ModelError(f"{where}: it outputs {classes} class probabilities, the local contract names "
                             f"{local_classes}; it is not the model of {self.path.name}")

    # --- inference -----------------------------------------------------------------------------------------
    def run(self, batch: np.ndarray, outputs: Sequence[str] = (PROBABILITIES,)) -> dict[str, np.ndarray]:
        """One request per batch; the server may batch it further with other clients' requests."""
        import tritonclient.http as http

        if time.monotonic() < self._down_until:
            raise InferenceError(f"{self.server} did not answer a moment ago; retrying in a few seconds")
        request = http.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        request.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32), binary_data=True)
        wanted = [http.InferRequestedOutput(name, binary_data=True) for name in outputs]
        for attempt in range(RETRIES + 1):
            try:
                result = self._client().infer(self.model_name, [request], outputs=wanted, headers=self._headers)
                break
            except Exception as exc:
                if attempt == RETRIES or not _retryable(exc):
                    if _retryable(exc):
                        self._down_until = time.monotonic() + COOLDOWN_S
                    self._local.client = None  # a fresh connection next time
                    raise InferenceError(f"{self.server}: {_reason(exc)}") from exc
                self._local.client = None
                time.sleep(0.2 * 2**attempt)
        self._down_until = 0.0
        return {name: self._shaped(result.as_numpy(name), name, len(batch)) for name in outputs}

    def _shaped(self, array: np.ndarray | None, name: str, count: int) -> np.ndarray:
        """A served output in the local model's shape (a server may add a unit axis to per-image scalars)."""
        if array is None:
            raise InferenceError(f"{self.server}: the answer holds no {name!r}")
        shape = self.io.output_shapes.get(name)
        return array.reshape(count, *shape[1:]) if shape is not None else array


def _retryable(exc: BaseException) -> bool:
    """Connection failures and timeouts are worth retrying; a server's refusal of the request is not."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        return status in ("", "None", "500", "502", "503", "504") or "unavailable" in exc.message().lower()
    return isinstance(exc, (OSError, TimeoutError)) or "timeout" in type(exc).__name__.lower()


def _reason(exc: BaseException) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        return first_line(Exception(exc.message())) or f"status {exc.status()}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return first_line(exc)
