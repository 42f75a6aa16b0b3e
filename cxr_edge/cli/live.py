"""The live room: `watch` and `dicom-listen`, the long-running modes beside the X-ray machine, and `status-page`, which
shows either in a browser."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cxr_edge.runtime.choices import SR_KINDS

from .common import (
    EXIT_OK,
    destinations,
    engine_options,
    forward_option,
    gate_option,
    live_output_options,
    model_option,
    output_options,
    remote_if_server,
    server_options,
)

__all__ = ["COMMANDS", "watch", "dicom_listen", "status_page"]

@click.command()
@click.argument("in_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Results folder: results/ (one JSON per image), done/ and failed/ (the inputs, moved), "
                   "processing/ (in flight); created if missing.")
@engine_options
@click.option("--settle", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="Seconds a file's size must stay unchanged before it counts as complete when its writer's "
                   "close cannot be seen (polling, files present at start).")
@click.option("--poll", type=click.FloatRange(0.05), default=None,
              help="List the folder every POLL seconds instead of using inotify (network shares).")
@click.option("--once", is_flag=True, help="Process what is in the folder (and unfinished work), then exit.")
@live_output_options(None, "Default: none, or tid1500 with --forward.")
@forward_option
@gate_option
@server_options
def watch(in_dir: str, out_dir: str, model: str | None, backend: str, threads: int | None, settle: float,
          poll: float | None, once: bool, cam: bool, sc: bool, sr_kind: str | None, fhir_dir: str | None,
          keep_phi: bool, drift_baseline: int, group: str | None, forward: tuple[str, ...], stow: tuple[str, ...],
          forward_ca: str | None, forward_cert: str | None, forward_key: str | None, gate: str, server: str | None,
          model_name: str | None, token_file: str | None, server_ca: str | None) -> int:
    """Classify every image that arrives in IN_DIR, exactly once, until stopped (Ctrl-C or SIGTERM).

    A file counts as arrived when its writer closes or renames it (names like *.part, *.tmp and dot-files are
    ignored until then). Each image gets OUT/results/<name>.<hash>.json (the `predict` jsonl record plus its
    SHA-256 and arrival and finish times) and moves to OUT/done/, or to OUT/failed/ with a .reason.txt. Files
    already in IN_DIR are processed too. After a crash or kill -9, restarting finishes the work in flight: no
    image is lost and none gets two results. An input that changes after its result (a writer that paused) is
    classified again. If OUT cannot be written (read-only, full), it waits and retries; it never exits for it.
    Prints one line per image and a summary whenever it goes idle. OUT/status.json says what the watcher is
    doing; `cxr-edge status-page OUT` shows it in a browser.
    """
    from cxr_edge.runtime.files import utc_now
    from cxr_edge.runtime.live.watch import FolderWatcher
    from cxr_edge.runtime.model.classifier import Classifier
    from cxr_edge.runtime.outputs.records import live_line

    targets = destinations(forward, forward_ca, forward_cert, forward_key, stow)
    outputs = output_options(cam, sc, sr_kind, fhir_dir, keep_phi, "watch", group, drift_baseline)
    classifier = Classifier.open(model, backend=remote_if_server(backend, server), threads=threads, mode="latency",
                                 gate=gate, server=server, model_name=model_name,
                                 token_file=token_file, server_ca=server_ca)

    def show(record: dict, repeated: bool) -> None:
        click.echo(live_line(record, Path(record["path"]).name, at=utc_now() if repeated else None,
                             note="already classified: kept the earlier result" if repeated else None))

    watcher = FolderWatcher(in_dir, out_dir, classifier, outputs=outputs, settle_s=settle, poll_s=poll,
                            on_record=show, forward=targets,
                            on_idle=lambda summary: click.echo(f"-- {summary.line()}; waiting", err=True))
    click.echo(f"cxr-edge: watching {in_dir} ({'once' if once else watcher.mode}) with {classifier.path.name} on "
               f"{classifier.backend.name}; results in {out_dir}", err=True)
    with StopOnSignals(watcher.stop):
        summary = watcher.run(once=once)
    click.echo(f"cxr-edge: stopped: {summary.line()}", err=True)
    return EXIT_OK


@click.command("dicom-listen")
@click.option("--port", type=click.IntRange(0, 65535), default=11112, show_default=True,
              help="TCP port (104 needs root or CAP_NET_BIND_SERVICE).")
@click.option("--ae-title", default="CXREDGE", show_default=True, help="This node's AE title (1-16 characters).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Results folder: incoming/, done/, failed/ (instances), results/ (JSON per SOP Instance UID), "
                   "sr/ (a report per instance), quarantine/ (refused datasets with their reasons), status.json.")
@engine_options
@click.option("--allow", multiple=True, metavar="AE",
              help="Accept associations only from this calling AE title (repeat for several). Default: any. "
                   "Titles match exactly and case-sensitively; leading and trailing spaces do not count (DICOM "
                   "PS3.5 6.2); a title with a backslash or control character is refused.")
@click.option("--host", default="", help="Address to listen on (default: every interface).")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Accept associations over TLS only (DICOM's secure transport, TLS 1.2 or newer, no anonymous "
                   "ciphers), with this certificate (PEM); plain TCP is then refused.")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="The key of --tls-cert (PEM).")
@click.option("--tls-ca", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="With --tls-cert: accept only senders whose certificate this CA (PEM) signed.")
@live_output_options("tid1500", "")
@forward_option
@gate_option
@server_options
def dicom_listen(port: int, ae_title: str, out_dir: str, model: str | None, backend: str, threads: int | None,
                 allow: tuple[str, ...], host: str, cam: bool, sc: bool, sr_kind: str, fhir_dir: str | None,
                 keep_phi: bool, drift_baseline: int, group: str | None, forward: tuple[str, ...],
                 stow: tuple[str, ...], forward_ca: str | None, forward_cert: str | None, forward_key: str | None,
                 tls_cert: str | None, tls_key: str | None, tls_ca: str | None, gate: str, server: str | None,
                 model_name: str | None, token_file: str | None, server_ca: str | None) -> int:
    """Receive radiographs over DICOM (C-STORE) and classify each one, until stopped (Ctrl-C or SIGTERM).

    Accepts Computed Radiography, Digital X-Ray (for presentation and for processing) and Secondary Capture
    images, uncompressed, JPEG, JPEG 2000 or RLE, and answers C-ECHO. Each instance is stored before Success is
    returned, then classified from a queue: OUT/results/<SOP Instance UID>.json and OUT/sr/<UID>.sr.dcm, a
    report in the image's study (coded TID 1500 by default), which --forward sends on to a PACS. OUT/status.json
    says what the listener is doing; `cxr-edge status-page OUT` shows it in a browser. Bad datasets get a
    failure status and a copy in OUT/quarantine/. An instance sent twice is kept once; a different dataset
    reusing a SOP Instance UID is stored as <UID>_2 with a warning. Logs name instances by UID only; patient
    identifiers are never printed.

    Idle or hostile peers cannot lock senders out: at most 4 open connections per address, 10 s to send an
    association request, 30 s of silence before an association is aborted.
    """
    import threading

    from cxr_edge.runtime.live.dicom_listener import DicomListener
    from cxr_edge.runtime.model.classifier import Classifier
    from cxr_edge.runtime.outputs.records import live_line

    targets = destinations(forward, forward_ca, forward_cert, forward_key, stow)
    outputs = output_options(cam, sc, sr_kind, fhir_dir, keep_phi, "dicom-listen", group, drift_baseline)
    tls = _server_tls(tls_cert, tls_key, tls_ca)
    classifier = Classifier.open(model, backend=remote_if_server(backend, server), threads=threads, mode="latency",
                                 gate=gate, server=server, model_name=model_name,
                                 token_file=token_file, server_ca=server_ca)

    def show(record: dict) -> None:
        click.echo(live_line(record, record["sop_instance_uid"], latency_ms=record.get("arrival_to_result_ms")))

    listener = DicomListener(out_dir, classifier, port=port, ae_title=ae_title, host=host, allow=allow or None,
                             outputs=outputs, on_record=show, forward=targets, tls=tls)
    listener.start()
    click.echo(f"cxr-edge: listening as {listener.ae_title} on port {listener.port} with {classifier.path.name} on "
               f"{classifier.backend.name}; results in {out_dir}"
               + (f"; calling AEs allowed: {', '.join(allow)}" if allow else "")
               + (" over TLS" if tls is not None else "")
               + (f"; forwarding to {', '.join(map(str, targets))}" if targets else ""), err=True)
    stopped = threading.Event()
    with StopOnSignals(stopped.set):
        while not stopped.wait(60):
            click.echo(f"-- {listener.summary.line()}, {listener.quarantined} quarantined", err=True)
    listener.stop()
    click.echo(f"cxr-edge: stopped: {listener.summary.line()}, {listener.quarantined} quarantined", err=True)
    return EXIT_OK


@click.command("status-page")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="TCP port of the page.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on. Anything but loopback needs --tls-cert, --tls-key and --login (or "
                   "--insecure, which the page and the log then say).")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Serve over HTTPS with the site's certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="The key of --tls-cert (PEM).")
@click.option("--login", "login_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Ask for the token whose hash FILE holds (made by `cxr-edge status-page-token FILE`): the "
                   "browser's login box, any user name, the token as password.")
@click.option("--insecure", is_flag=True,
              help="Serve beyond loopback without HTTPS or a login (said on the page and in the log).")
@click.option("--audit-dir", type=click.Path(file_okay=False), default=None,
              help="Where the page records logins (default: OUT_DIR/audit).")
def status_page(out_dir: str, port: int, host: str, tls_cert: str | None, tls_key: str | None,
                login_file: str | None, insecure: bool, audit_dir: str | None) -> int:
    """Show a live mode's results and health in a browser: open http(s)://HOST:PORT/ beside the X-ray machine.

    OUT_DIR is the --out folder of a running (or stopped) `watch` or `dicom-listen`. The page lists the latest
    results with their heatmaps (--cam), failures with their reasons, images per hour, and whether the live mode is
    running, its last arrival, queue and PACS backlog; it updates itself as results arrive. It only reads OUT_DIR,
    which need not exist yet: the page then says that no live mode has written there. It never shows patient names
    or IDs; beyond loopback it needs HTTPS and a login. Needs pip install 'cxr-edge[status]'.
    """
    import socket

    from cxr_edge.runtime.errors import CxrEdgeError
    from cxr_edge.runtime.extras import require

    require("starlette", "uvicorn", purpose="status-page")
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a restart may follow a stop
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CxrEdgeError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
    from cxr_edge.runtime.live.status_page import serve

    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if tls_cert else "http"
    click.echo(f"cxr-edge: status page of {out_dir} on {scheme}://{shown}:{port}/ (Ctrl-C stops it)", err=True)
    serve(out_dir, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, login_file=login_file,
          insecure=insecure, audit_dir=audit_dir)
    return EXIT_OK


@click.command("orthanc-config")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--http-port", type=click.IntRange(1, 65535), default=8042, show_default=True,
              help="Orthanc's REST API and DICOMweb (served on 127.0.0.1 only).")
@click.option("--dicom-port", type=click.IntRange(1, 65535), default=4242, show_default=True,
              help="Orthanc's DICOM port (C-STORE from the modalities).")
@click.option("--aet", default="ORTHANC", show_default=True, help="Orthanc's AE title.")
@click.option("--storage", type=click.Path(file_okay=False), default=None,
              help="Orthanc's storage and index folder (default: FOLDER/storage).")
@model_option
@click.option("--backend", default="auto", show_default=True, help="Inference engine (see predict --help).")
@click.option("--sr", "sr_kind", type=click.Choice(SR_KINDS), default="tid1500", show_default=True,
              help="The report stored into each study: a coded TID 1500 SR, or a Basic Text SR.")
@click.option("--sc", is_flag=True, help="Also store the heatmap as a Secondary Capture in the study.")
@click.option("--drift-baseline", type=click.IntRange(20, None), default=200, show_default=True, metavar="N",
              help="Results forming the drift baseline (see cxr-edge drift).")
def orthanc_config(folder: str, http_port: int, dicom_port: int, aet: str, storage: str | None, model: str | None,
                   backend: str, sr_kind: str, sc: bool, drift_baseline: int) -> int:
    """Write an Orthanc configuration that classifies every CR and DX image Orthanc stores.

    FOLDER gets orthanc.json and the plugin loader; start Orthanc with `Orthanc FOLDER/orthanc.json`. Each stored
    radiograph is classified by cxr-edge inside Orthanc's Python plugin and its coded SR (and with --sc its
    heatmap) is stored into the same study; GET /cxr-edge/status on the HTTP port shows the queue and the last
    results. Needs Debian's orthanc, orthanc-python and orthanc-dicomweb.
    """
    from cxr_edge.runtime.live.orthanc import write_config

    path = write_config(Path(folder), http_port=http_port, dicom_port=dicom_port, aet=aet,
                        storage=Path(storage) if storage else None, model=model, backend=backend, sr=sr_kind, sc=sc,
                        drift_baseline=drift_baseline)
    click.echo(f"wrote {path}; start Orthanc with: Orthanc {path}")
    return EXIT_OK


@click.command("status-page-token")
@click.argument("file", type=click.Path(dir_okay=False))
def status_page_token(file: str) -> int:
    """Make the status page's login: a new random token, printed once, its salted hash written to FILE (0600).

    Give FILE to `status-page --login FILE`; the browser then asks for it (any user name, the token as
    password). Running it again replaces the token. The token itself is stored nowhere.
    """
    from cxr_edge.runtime.live.login import make_token

    token = make_token(file)
    click.echo(token)
    click.echo(f"cxr-edge: the status page's token, shown this once; its hash is in {file}", err=True)
    return EXIT_OK


@click.command("audit-log")
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--since", default=None, metavar="WHEN",
              help="Only events from then on: an ISO date or time (2026-12-01, 2026-12-01T08:00) or a span back from "
                   "now (30m, 12h, 7d).")
@click.option("--event", "events", multiple=True, metavar="NAME",
              help="Only events of this kind (repeatable): start, stop, association-accepted, association-refused, "
                   "instance-received, result-written, report-forwarded, report-refused, login-accepted, "
                   "login-refused, drift-alarm, drift-alarm-end, drift-device.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of the table.")
def audit_log(out_dir: str, since: str | None, events: tuple[str, ...], as_json: bool) -> int:
    """Show a live mode's audit trail (OUT_DIR/audit): who sent what to whom, and what came of it.

    Every event names images by SOP Instance UID (or SHA-256), never by patient; peers by AE title and address.
    """
    import json

    from rich.console import Console

    from cxr_edge.runtime.outputs.trail import read_trail, render_trail, since_time

    chosen = [e for e in read_trail(Path(out_dir) / "audit", since_time(since)) if not events or e["event"] in events]
    if as_json:
        for event in chosen:
            click.echo(json.dumps(event))
    else:
        render_trail(chosen, Console(highlight=False))
    return EXIT_OK


def _server_tls(cert: str | None, key: str | None, ca: str | None) -> Any:
    """The DICOM node's TLS from its options, or None for plain TCP."""
    if cert is None and key is None and ca is None:
        return None
    if cert is None or key is None:
        raise click.UsageError("--tls-cert and --tls-key go together (and --tls-ca needs them)")
    from cxr_edge.runtime.outputs.tls import server_context

    return server_context(cert, key, ca)


class StopOnSignals:
    """Route SIGINT and SIGTERM to `stop` (finish the image in hand, then return) while inside the block."""

    def __init__(self, stop: Callable[[], Any]) -> None:
        self.stop = stop
        self.previous: dict = {}

    def __enter__(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            click.echo("cxr-edge: stopping after the image in hand", err=True)
            self.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, handler)

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)


COMMANDS = (watch, dicom_listen, status_page, status_page_token, audit_log, orthanc_config)
