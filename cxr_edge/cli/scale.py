"""The scale room: past one workstation. `export-repository` lays the model out for Triton or OpenVINO Model
Server; `score-archive` scores a whole archive on Ray. Inference on a server from the other commands is
`--backend kserve --server URL`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .common import EXIT_OK, EXIT_PARTIAL, backend_option, csv_list, gate_option, model_option

__all__ = ["COMMANDS", "export_repository_command", "score_archive_command"]

REPOSITORY_FORMATS = ("triton", "ovms", "both")
"""`cxr_edge.runtime.scale.repository.REPOSITORY_FORMATS`, repeated so that ``--help`` needs no numpy (a test keeps
both equal)."""


@click.command("export-repository")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Model file (repeatable: one ONNX, one OpenVINO IR). Default: the shipped INT8 ONNX and IR.")
@click.option("--format", "fmt", type=click.Choice(REPOSITORY_FORMATS), default="both", show_default=True,
              help="Triton (config.pbtxt per model), OpenVINO Model Server (config.json) or both in one tree.")
@click.option("--name", default="cxr-edge", show_default=True,
              help="Served model name (the IR is served as NAME-openvino).")
@click.option("--version", "version", type=click.IntRange(1), default=1, show_default=True,
              help="Version folder to add; older versions stay and are served too.")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True,
              help="Inference threads per server instance.")
def export_repository_command(out: str, models: tuple[str, ...], fmt: str, name: str, version: int,
                              threads: int) -> int:
    """Write a model repository that NVIDIA Triton or OpenVINO Model Server serves as it is.

    Each model gets its version folder, labels.txt, and cxr-edge.json (contract, gate policy, provenance,
    SHA-256) so that `--backend kserve` clients can check they talk to the model they expect. Point the server
    at OUT: `tritonserver --model-repository OUT`, or `ovms --config_path OUT/config.json`.
    """
    from cxr_edge.runtime.model.model_file import MODELS_DIR, SHIPPED_INT8, SHIPPED_OPENVINO
    from cxr_edge.runtime.scale.repository import export_repository

    files = [Path(m) for m in models] or [MODELS_DIR / SHIPPED_INT8, MODELS_DIR / SHIPPED_OPENVINO]
    served = export_repository(out, files, fmt=fmt, name=name, version=version, threads=threads)
    for model in served:
        click.echo(f"{model.version_dir}: {model.name} version {version} ({model.backend})")
    return EXIT_OK


@click.command("score-archive")
@click.argument("source")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Results folder: parts/*.parquet (one row per image); a rerun continues where the last stopped.")
@model_option
@backend_option("Inference engine inside each worker.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Ray actors, each with one classifier and one inference thread.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True,
              help="Images per worker call and per written Parquet part.")
@click.option("--address", default="local", show_default=True,
              help="local: a Ray instance for this job; auto: the cluster this machine joined (`ray start`); or "
                   "a cluster address such as ray://head:10001.")
@click.option("--jsonl", is_flag=True, help="Also append every row to OUT/results.jsonl.")
@click.option("--modality", "modalities", default="CR,DX", show_default=True, callback=csv_list(str),
              help="With a DICOMweb SOURCE: the modalities QIDO-RS asks for.")
@click.option("--study-date", default=None, metavar="RANGE",
              help="With a DICOMweb SOURCE: only studies of these dates (20240101-20241231, 20240101-, 20240315).")
@gate_option
def score_archive_command(source: str, out_dir: str, model: str | None, backend: str, workers: int,
                          batch_size: int, address: str, jsonl: bool, modalities: tuple[str, ...],
                          study_date: str | None, gate: str) -> int:
    """Score a whole archive on Ray: SOURCE is a folder tree, a CSV/TSV manifest of paths, or a PACS's DICOMweb
    service (dicomweb+https://pacs/dicom-web: instances found by QIDO-RS, fetched by WADO-RS as stored).

    Each image gets one row (the predict record, its SHA-256, size and time stamp, the model's SHA-256) in
    OUT/parts/*.parquet, written batch by batch as results arrive. Run it again after a crash or kill and it
    skips what already has a row for this model (same file, or same content): nothing is scored twice. An
    unreadable file is a row with its error. Needs the scale extra: pip install 'cxr-edge[scale]'.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cxr_edge.runtime.scale.archive import score_archive

    err = Console(stderr=True)
    started = time.monotonic()
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("scoring", total=None, rate="")

        def advance(done: int, total: int) -> None:
            rate = done / max(time.monotonic() - started, 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{rate:,.1f} images/s")

        summary = score_archive(source, out_dir, model=model, backend=backend, workers=workers,
                                batch_size=batch_size, address=address, jsonl=jsonl, gate=gate,
                                on_progress=advance, modalities=modalities, study_date=study_date)
    click.echo(f"cxr-edge: {summary.line()}; results in {Path(out_dir) / 'parts'}", err=True)
    return EXIT_PARTIAL if summary.statuses.get("failed") else EXIT_OK


COMMANDS = (export_repository_command, score_archive_command)
