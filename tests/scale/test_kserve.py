"""The remote engine against a real Triton server on 127.0.0.1: same answers as local, batched on the server,
mismatches refused at open, a server gone mid-run failing images (not hanging)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr_edge.runtime.errors import InferenceError, ModelError
from cxr_edge.runtime.model.classifier import Classifier
from cxr_edge.runtime.model.model_file import MODELS_DIR, SHIPPED_INT8
from cxr_edge.runtime.model.stream import predict_stream
from tests.factories import CLASSES, tiny_onnx
from tests.hostile import noisy_film
from tests.numerics import assert_same_results, int8_rerun_bound
from tests.processes import run_cli
from tests.scale.conftest import TritonServer

ACCESS_TOKEN = "cxr-edge-tests"
"""tests/serving/pytriton_server.py's token for the statistics API."""

SHIPPED = MODELS_DIR / SHIPPED_INT8
BURSTS = 3
"""Bursts of simultaneous requests tried before concluding that the server does not batch."""


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("films")
    paths = []
    for i in range(6):
        path = folder / f"film{i}.png"
        cv2.imwrite(str(path), np.roll(noisy_film(), 37 * i, axis=1))
        paths.append(path)
    return paths


def test_remote_answers_equal_local_ones(triton: TritonServer, films: list[Path]) -> None:
    remote = Classifier.open(SHIPPED, backend="kserve", server=triton.url)
    local = Classifier.open(SHIPPED, backend="ort", threads=1)
    assert remote.backend.settings["model"] == "cxr-edge" and remote.contract == local.contract
    there, here = remote.predict(films, batch_size=4), local.predict(films, batch_size=4)
    assert all(p.error is None for p in there)
    assert_same_results(there, here, int8_rerun_bound(SHIPPED))  # the server's own threads: not bit-equal
    assert [p.gate["threshold"] for p in there] == [p.gate["threshold"] for p in here]


def test_concurrent_requests_are_batched_by_the_server(triton: TritonServer) -> None:
    """Bursts of 16 simultaneous requests: the server must run fewer executions than requests (a mean batch above
    one). The server's statistics are read once they count every request (they are updated after the answer),
    and a burst spread out by a loaded machine is simply followed by another, up to `BURSTS`."""
    import tritonclient.http as http

    backend = Classifier.open(SHIPPED, backend="kserve", server=triton.url).backend
    stats = http.InferenceServerClient(f"127.0.0.1:{triton.port}")

    def counts() -> tuple[int, int]:
        model = stats.get_inference_statistics("cxr-edge", headers={"triton-access-token": ACCESS_TOKEN})[
            "model_stats"][0]
        return int(model["inference_count"]), int(model["execution_count"])

    one = np.random.default_rng(0).normal(size=(1, 1, 224, 224)).astype(np.float32)
    before, sent = counts(), 0
    for _ in range(BURSTS):
        start = threading.Barrier(16)

        def send(barrier: threading.Barrier) -> None:
            barrier.wait()
            backend.run(one)

        threads = [threading.Thread(target=send, args=(start,)) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent += 16
        deadline = time.monotonic() + 30
        while (now := counts())[0] - before[0] < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        inferences, executions = now[0] - before[0], now[1] - before[1]
        assert inferences == sent, f"the server counted {inferences} of {sent} requests within 30 s"
        if executions < inferences:
            break
    assert executions < inferences, f"{inferences} requests ran as {executions} executions: never batched"


def test_a_model_with_another_contract_is_refused_at_open(triton: TritonServer, tmp_path: Path) -> None:
    three = tiny_onnx(tmp_path / "three.onnx", size=224, classes=CLASSES[:3])
    with pytest.raises(ModelError, match="outputs 4 class probabilities, the local contract names 3"):
        Classifier.open(three, backend="kserve", server=triton.url)
    small = tiny_onnx(tmp_path / "small.onnx", size=64)
    with pytest.raises(ModelError, match=r"its input is \[1, 224, 224\] per image, the local contract's \[1, 64, 64\]"):
        Classifier.open(small, backend="kserve", server=triton.url)
    result = run_cli("predict", "--backend", "kserve", "--server", triton.url, "--model", three, tmp_path)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not the model of three.onnx" in result.stderr


def test_no_server_or_no_model_is_one_line(triton: TritonServer, tmp_path: Path) -> None:
    from tests.scale.conftest import free_port_block

    nowhere = f"http://127.0.0.1:{free_port_block()}"
    for args, words in ((["--server", nowhere], "no inference server answers"),
                        (["--server", triton.url, "--model-name", "absent"], "no model 'absent'"),
                        (["--server", "ftp://x"], "give http://HOST:PORT")):
        result = run_cli("predict", str(tmp_path), *args)
        assert result.returncode == 1, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, (args, result.stderr)
    usage = run_cli("predict", str(tmp_path), "--backend", "ort", "--server", triton.url)
    assert usage.returncode == 1 and usage.stderr.strip().endswith("--backend ort runs them here")


def test_a_server_gone_mid_run_fails_the_rest_quickly_and_never_hangs(films: list[Path]) -> None:
    server = TritonServer(SHIPPED)
    try:
        classifier = Classifier.open(SHIPPED, backend="kserve", server=server.url)
        results, killed_at = [], None
        for prediction in predict_stream(classifier, films * 3, batch_size=1, workers=1):
            results.append(prediction)
            if len(results) == 2:
                server.stop()
                killed_at = time.monotonic()
        elapsed = time.monotonic() - killed_at
    finally:
        server.stop()
    assert [r.error for r in results[:2]] == [None, None]
    failed = results[2:]
    assert len(failed) == 16 and all(r.label is None and r.error.startswith("inference failed: ") for r in failed)
    assert elapsed < 20  # connection refused, retried twice, then fail fast for the cool-down
    with pytest.raises(InferenceError):
        classifier.backend.run(np.zeros((1, 1, 224, 224), np.float32))


def test_watch_and_bench_run_on_the_server(triton: TritonServer, films: list[Path], tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    for path in films[:2]:
        (inbox / path.name).write_bytes(path.read_bytes())
    result = run_cli("watch", inbox, "--out", tmp_path / "out", "--server", triton.url, "--once")
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "results").glob("*.json")]
    assert len(records) == 2 and all(r["error"] is None for r in records)

    from cxr_edge.runtime.evaluation.bench import run_bench

    bench = run_bench([SHIPPED], backends=("ort", "kserve"), precisions=("int8",), batches=(1,), runs=10,
                      warmup=2, threads=1, server=triton.url)
    rows = {row["backend"]: row for row in bench["rows"]}
    assert "error" not in rows["kserve"] and rows["kserve"]["remote_overhead_ms"] > 0
    assert "load_s" in rows["ort"] and "load_s" not in rows["kserve"]  # a server's start-up is its own


class _GuardedProxy:
    """An HTTPS front to the real Triton server, as a hospital's gateway would be: TLS with a certificate of the
    test CA, and a bearer token required on every request; what passes is forwarded to Triton unchanged."""

    def __init__(self, upstream: int, cert: Path, key: Path, token: str) -> None:
        import http.client
        import ssl
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                connection = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
                connection.request(self.command, self.path, body,
                                   {k: v for k, v in self.headers.items() if k.lower() != "authorization"})
                answer = connection.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_remote_engine_over_https_with_a_token(triton: TritonServer, films: list[Path], tmp_path: Path) -> None:
    from tests.certificates import Authority

    ca, other = Authority(tmp_path / "ca"), Authority(tmp_path / "other", "another CA")
    site = ca.issue("models")
    token = "s3cret-token-for-tests"
    (tmp_path / "token").write_text(token + "\n")
    proxy = _GuardedProxy(triton.port, site.cert, site.key, token)
    url = f"https://127.0.0.1:{proxy.port}"
    try:
        remote = Classifier.open(SHIPPED, backend="kserve", server=url, token_file=tmp_path / "token",
                                 server_ca=ca.cert)
        local = Classifier.open(SHIPPED, backend="ort", threads=1)
        assert_same_results(remote.predict(films[:2]), local.predict(films[:2]), int8_rerun_bound(SHIPPED))
        (tmp_path / "wrong").write_text("not-the-token")
        with pytest.raises(ModelError, match=r"refused the request \(HTTP 401\)"):
            Classifier.open(SHIPPED, backend="kserve", server=url, token_file=tmp_path / "wrong", server_ca=ca.cert)
        with pytest.raises(ModelError, match="no inference server answers"):  # the certificate is checked
            Classifier.open(SHIPPED, backend="kserve", server=url, token_file=tmp_path / "token",
                            server_ca=other.cert)
        with pytest.raises(ModelError, match="needs an https:// server"):  # a token is never sent in clear
            Classifier.open(SHIPPED, backend="kserve", server=triton.url, token_file=tmp_path / "token")
    finally:
        proxy.server.shutdown()
