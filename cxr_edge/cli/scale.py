"""The scale room: past one workstation. `export-repository` lays the model out for Triton or OpenVINO Model
Server; `score-archive` scores a whole archive on Ray. Inference on a server from the other commands is
`--backend kserve --server URL`."""

from __future__ import annotations

from pathlib import Path

import click

from .common import EXIT_OK

__all__ = ["COMMANDS", "export_repository_command"]

REPOSITORY_FORMATS = ("triton", "ovms", "both")
"""`cxr_edge.runtime.repository.REPOSITORY_FORMATS`, repeated so that ``--help`` needs no numpy (a test keeps
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
    from cxr_edge.runtime.model_file import MODELS_DIR, SHIPPED_INT8, SHIPPED_OPENVINO
    from cxr_edge.runtime.repository import export_repository

    files = [Path(m) for m in models] or [MODELS_DIR / SHIPPED_INT8, MODELS_DIR / SHIPPED_OPENVINO]
    served = export_repository(out, files, fmt=fmt, name=name, version=version, threads=threads)
    for model in served:
        click.echo(f"{model.version_dir}: {model.name} version {version} ({model.backend})")
    return EXIT_OK


COMMANDS = (export_repository_command,)
