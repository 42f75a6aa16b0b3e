"""What every room of the CLI shares: exit codes, the options that several commands take, progress bars."""

from __future__ import annotations

from typing import Any

import click

from cxr_edge.runtime.choices import GATE_MODES, SR_KINDS
from cxr_edge.runtime.model.model_file import ENGINES

__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_PARTIAL", "EXIT_DOUBTFUL", "GATE_MODES", "SR_KINDS", "model_option",
           "backend_option", "server_options", "remote_if_server", "threads_option", "gate_option", "progress",
           "csv_list", "engine_choices", "engine_options", "group_option", "apply_group", "live_output_options",
           "forward_option", "output_options", "destinations"]

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL, EXIT_DOUBTFUL = 0, 1, 2, 3
"""0 success, 1 usage or model error, 2 some inputs failed while the rest were processed, 3 (with ``--strict``)
every input was read but some were rejected by the gate or uncertain."""


gate_option = click.option(
    "--gate", type=click.Choice(GATE_MODES), default="reject", show_default=True,
    help="What to do with an image the model's gate says is not a frontal chest radiograph like its training "
         "images (a photo, another body part, a rotated or inverted film): reject (no label), warn (label and a "
         "warning) or off.")


def engine_choices() -> list[str]:
    """``auto`` and every engine of the engine table."""
    return ["auto", *ENGINES]


def server_options(command: Any) -> Any:
    """``--server``, ``--model-name``, ``--token-file`` and ``--server-ca``: inference on a KServe v2 server (Triton,
    OpenVINO Model Server); the command receives them as one ``remote`` mapping."""
    command = click.option("--server-ca", default=None, metavar="FILE", type=click.Path(dir_okay=False),
                           help="With an https:// --server: the CA (PEM) its certificate is checked against (default: "
                                "the system's CAs; certificates are always checked).")(command)
    command = click.option("--token-file", default=None, metavar="FILE", type=click.Path(dir_okay=False),
                           help="With an https:// --server: send the bearer token this file holds with every "
                                "request (never on the command line).")(command)
    command = click.option("--model-name", default=None, metavar="NAME",
                           help="The server's name for the model (default: as export-repository names it: "
                                "cxr-edge, or cxr-edge-openvino for an IR).")(command)
    return click.option("--server", default=None, metavar="URL",
                        help="With --backend kserve: the inference server, http(s)://HOST:PORT. Decoding, the "
                             "contract, the gate and outputs stay here; --model supplies the contract the "
                             "server's model is checked against.")(command)


model_option = click.option("--model", type=click.Path(dir_okay=False), default=None,
                            help="Model file (.onnx, or OpenVINO .xml). Default: the shipped INT8 model.")
threads_option = click.option("--threads", type=click.IntRange(1), default=None,
                              help="Inference threads (default: all cores).")


def engine_options(command: Any) -> Any:
    """``--model``, ``--backend`` and ``--threads``: which model runs where, for the commands that classify."""
    return model_option(backend_option()(threads_option(command)))


def backend_option(help_text: str = "Inference engine (see `predict --help`).") -> Any:
    """``--backend``, its choices read from the engine table when the command is defined."""
    return click.option("--backend", type=click.Choice(engine_choices()), default="auto", show_default=True,
                        help=help_text)


def progress(console: Any, total: int | None, *, spinner: bool = False) -> Any:
    """A progress bar on stderr for long work on a terminal; silent otherwise (pipes, single files)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if spinner:
        return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                        transient=True, disable=not console.is_terminal)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=(total is not None and total < 2)
                    or not console.is_terminal)


def csv_list(kind: type, allowed: tuple | None = None) -> Any:
    """A click callback turning "a,b,c" into a validated tuple."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> tuple:
        try:
            items = tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError as exc:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of {kind.__name__}") from exc
        bad = [v for v in items if allowed is not None and v not in allowed]
        if bad or not items:
            raise click.BadParameter(f"choose from {', '.join(map(str, allowed or ()))}; got {value!r}")
        return items

    return parse


def remote_if_server(backend: str, server: str | None) -> str:
    """``--server`` alone means the remote engine; ``--server`` with a local engine is a contradiction."""
    if server is None:
        return backend
    remote = [name for name, engine in ENGINES.items() if engine.remote]
    if backend == "auto":
        return remote[0]
    if backend not in remote:
        raise click.UsageError(f"--server sends images to a server; --backend {backend} runs them here")
    return backend


group_option = click.option(
    "--group", default=None, metavar="NAME",
    help="Open the folders and files written (which hold patient data) to this group: read access, never "
         "write, never to others. Default: the owner only (folders 0700, files 0600, whatever the umask).")


def apply_group(group: str | None) -> None:
    """The ``--group`` option's effect, before anything is written."""
    from cxr_edge.runtime.files import share_with

    share_with(group)


def live_output_options(sr_default: str | None, sr_note: str) -> Any:
    """``--cam``, ``--sc``, ``--sr``, ``--fhir``, ``--keep-phi`` and ``--drift-baseline``: what a live mode writes
    per image beside its record and how it watches the stream, the same options in both live modes (`predict`
    takes folders for them instead)."""

    def decorate(command: Any) -> Any:
        for option in reversed((
            click.option("--cam", is_flag=True,
                         help="Also write the heatmap picture per image to OUT/cam/ (the finding, the class and a "
                              "colour scale burned in; the status page shows it)."),
            click.option("--sc", is_flag=True,
                         help="For DICOM inputs, also write the heatmap as a DICOM Secondary Capture in the study "
                              "(OUT/sc/), labelled NOT FOR DIAGNOSTIC USE, forwarded with the report."),
            click.option("--sr", "sr_kind", type=click.Choice(SR_KINDS), default=sr_default,
                         show_default=sr_default is not None,
                         help="For DICOM inputs, a report in the image's study (OUT/sr/): tid1500, a coded "
                              "Comprehensive 3D SR (TID 1500: the coded finding, probabilities, status, algorithm); "
                              f"basic, a Basic Text SR for a PACS that cannot show TID 1500. {sr_note}"),
            click.option("--fhir", "fhir_dir", type=click.Path(file_okay=False), default=None,
                         help="Also write a FHIR R5 Bundle (DiagnosticReport + Observation) per image into this "
                              "folder; no patient identifiers unless --keep-phi. Needs pip install "
                              "'cxr-edge[fhir]'."),
            click.option("--keep-phi", is_flag=True,
                         help="Also write patient name and ID into the JSON results and the FHIR subject."),
            click.option("--drift-baseline", type=click.IntRange(20, None), default=200, show_default=True,
                         metavar="N",
                         help="Results forming the site's drift baseline (kept in OUT/drift/); later images are "
                              "compared with it and an alarm is logged when they differ (see cxr-edge drift)."),
            group_option,
        )):
            command = option(command)
        return command

    return decorate


def forward_option(command: Any) -> Any:
    """``--forward AE@HOST:PORT`` and the TLS to reach the PACS with (``--forward-ca``, ``--forward-cert``,
    ``--forward-key``)."""
    for option in reversed((
        click.option("--forward", multiple=True, metavar="AE@HOST:PORT",
                     help="Send every report (and Secondary Capture) to this PACS by C-STORE, from a durable outbox "
                          "(OUT/outbox/): retried with backoff while the PACS is down, kept across restarts. "
                          "Repeatable."),
        click.option("--stow", multiple=True, metavar="URL",
                     help="Send every report (and Secondary Capture) to this DICOMweb service by STOW-RS "
                          "(https://pacs/dicom-web), from the same durable outbox as --forward. Repeatable."),
        click.option("--forward-ca", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                     help="Forward over TLS (DICOM's secure transport, TLS 1.2 or newer; HTTPS for --stow), checking "
                          "the PACS's certificate against this CA (PEM) and its host name."),
        click.option("--forward-cert", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                     help="With --forward-ca: this node's certificate (PEM), for a PACS that asks for one."),
        click.option("--forward-key", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                     help="The key of --forward-cert (PEM)."),
    )):
        command = option(command)
    return command


def destinations(forward: tuple[str, ...], ca: str | None, cert: str | None, key: str | None,
                 stow: tuple[str, ...] = ()) -> list[Any]:
    """The ``--forward`` and ``--stow`` destinations, each with the TLS the ``--forward-*`` options ask for."""
    from dataclasses import replace

    from cxr_edge.runtime.outputs.outbox import parse_destination
    from cxr_edge.runtime.outputs.stow import parse_web_destination
    from cxr_edge.runtime.outputs.tls import client_context

    if (cert is None) != (key is None) or (cert is not None and ca is None):
        raise click.UsageError("--forward-cert and --forward-key go together, and need --forward-ca")
    tls = client_context(ca, cert, key) if ca is not None else None
    web = [parse_web_destination(url, tls if url.startswith("https://") else None) for url in stow]
    return [replace(parse_destination(text), tls=tls) for text in forward] + web


def output_options(cam: bool, sc: bool, sr_kind: str | None, fhir_dir: str | None, keep_phi: bool,
                   command: str, group: str | None = None, drift_baseline: int = 200) -> Any:
    """The live output options as the runtime's `OutputOptions`, after checking the extras they need and opening
    the outputs to ``--group``."""
    from pathlib import Path

    from cxr_edge.runtime.extras import require
    from cxr_edge.runtime.outputs.steps import OutputOptions

    apply_group(group)
    if fhir_dir is not None:
        require("fhir", purpose=f"{command} --fhir")
    return OutputOptions(cam=cam, sc=sc, sr=sr_kind, fhir=Path(fhir_dir) if fhir_dir is not None else None,
                         keep_phi=keep_phi, drift_baseline=drift_baseline)
