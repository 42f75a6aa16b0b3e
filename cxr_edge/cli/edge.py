"""The edge room: `predict`, `info` and `bench` (numpy, OpenCV, ONNX Runtime, OpenVINO; never torch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cxr_edge.runtime.choices import OUTPUT_FORMATS, SR_KINDS
from cxr_edge.runtime.errors import CxrEdgeError, printable
from cxr_edge.runtime.model.model_file import ENGINES, local_engines

from .common import (
    EXIT_DOUBTFUL,
    EXIT_OK,
    EXIT_PARTIAL,
    apply_group,
    backend_option,
    csv_list,
    gate_option,
    group_option,
    model_option,
    progress,
    remote_if_server,
    server_options,
    threads_option,
)

__all__ = ["COMMANDS", "predict", "info", "bench"]

REFERENCE = "torch"
"""The bench's reference row: a training checkpoint in PyTorch eager mode, from the build side."""


@click.command()
@click.argument("paths", nargs=-1, required=True)
@model_option
@backend_option("Inference engine. auto: OpenVINO for .xml; for .onnx whichever was measured faster here.")
@threads_option
@click.option("--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default=None,
              help="Output: table (default on a terminal), jsonl (default otherwise) or csv.")
@click.option("--cam-dir", type=click.Path(file_okay=False), default=None,
              help="Write the heatmap picture per image here (<input name>.cam.png: the finding, the class and a "
                   "colour scale burned in); never replaces a file.")
@click.option("--sr", "sr_dir", type=click.Path(file_okay=False), default=None,
              help="For DICOM inputs, write a report in the image's study here (<input name>.sr.dcm), the kind of "
                   "--sr-kind; never replaces a file.")
@click.option("--sr-kind", type=click.Choice(SR_KINDS), default="tid1500", show_default=True,
              help="tid1500: a coded Comprehensive 3D SR; basic: a Basic Text SR.")
@click.option("--stow", multiple=True, metavar="URL",
              help="With --sr: also send the reports to this DICOMweb service by STOW-RS (https://pacs/dicom-web), "
                   "from a durable outbox in the --sr folder; what is not sent within a minute stays there. "
                   "Repeatable.")
@click.option("--fhir", "fhir_dir", type=click.Path(file_okay=False), default=None,
              help="Write a FHIR R5 Bundle per image here (<input name>.fhir.json); needs pip install "
                   "'cxr-edge[fhir]'.")
@click.option("--recursive", "-r", is_flag=True, help="Descend into subfolders of folder arguments.")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Images per inference call (default: 1 for a single file, 8 for many).")
@click.option("--show-phi", is_flag=True, help="Include DICOM patient name and ID in the output (never in logs).")
@group_option
@gate_option
@click.option("--strict", is_flag=True, help="Exit with 3 when any image is rejected or uncertain.")
@server_options
def predict(paths: tuple[str, ...], model: str | None, backend: str, threads: int | None, fmt: str | None,
            cam_dir: str | None, sr_dir: str | None, sr_kind: str, stow: tuple[str, ...], fhir_dir: str | None,
            recursive: bool,
            batch_size: int | None, show_phi: bool, group: str | None, gate: str, strict: bool,
            server: str | None, model_name: str | None, token_file: str | None, server_ca: str | None) -> int:
    """Classify X-rays: files, folders and glob patterns of PNG, JPEG, JPEG 2000, BMP, TIFF or DICOM.

    Every input gets a result in input order: its finding (normal, covid19, or pneumonia with the subtype as the
    class) and a status: classified; uncertain (the finding's probability below the model's abstention threshold:
    label kept, flagged); rejected (not a frontal chest radiograph like the training images: no label); failed
    (unreadable, with a one-line reason; the rest are still classified).
    Exit code 0: every input read; 2: some inputs failed; 3: with --strict, some rejected or uncertain (or, with
    --gate warn, kept although the gate objected); 1: usage or model error.
    """
    from rich.console import Console

    from cxr_edge.runtime.extras import require
    from cxr_edge.runtime.model.classifier import Classifier
    from cxr_edge.runtime.model.stream import predict_stream
    from cxr_edge.runtime.outputs.steps import file_steps
    from cxr_edge.runtime.outputs.table import Summary, make_writer
    from cxr_edge.runtime.reading.paths import expand_inputs

    if fhir_dir is not None:
        require("fhir", purpose="predict --fhir")
    if stow and sr_dir is None:
        raise click.UsageError("--stow sends the reports --sr writes: give --sr DIR too")
    apply_group(group)
    items = expand_inputs(paths, recursive=recursive)
    many = len(items) > 1
    err = Console(stderr=True, highlight=False)
    classifier = Classifier.open(model, backend=remote_if_server(backend, server), threads=threads,
                                 mode="throughput" if many else "latency", gate=gate, server=server,
                                 model_name=model_name, token_file=token_file, server_ca=server_ca)
    if cam_dir is not None and not classifier.has_cam:
        raise CxrEdgeError(f"{classifier.path}: the model has no 'cam' output, so --cam-dir cannot draw heatmaps")
    outputs = file_steps(classifier, cam_dir=_path(cam_dir), sr_dir=_path(sr_dir), sr_kind=sr_kind,
                         fhir_dir=_path(fhir_dir), keep_phi=show_phi)
    fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
    writer = make_writer(fmt, sys.stdout, Console(highlight=False), classifier.contract, show_phi=show_phi,
                         title=f"{classifier.path.name} on {classifier.backend.name}")
    click.echo(f"cxr-edge: model {classifier.path} on {classifier.backend.name} ({classifier.backend_reason})",
               err=True)
    summary, reports = Summary(), []
    bar = progress(err, len(items))
    with bar:
        task = bar.add_task("classifying", total=len(items))
        for prediction in predict_stream(classifier, items, batch_size=batch_size or (8 if many else 1),
                                         cam=cam_dir is not None):
            record = _deliver(prediction, classifier, outputs)
            if fmt != "table":  # the table lists warnings and errors under itself, once
                _say_problems(prediction)
            summary.add(prediction)
            writer.write(prediction, record)
            reports += [Path(record["sr"])] if record.get("sr") else []
            bar.advance(task)
    writer.close(summary)
    if stow:
        _stow(stow, Path(sr_dir), reports)
    if summary.failures:
        return EXIT_PARTIAL
    return EXIT_DOUBTFUL if strict and summary.doubtful else EXIT_OK


def _stow(urls: tuple[str, ...], sr_dir: Path, reports: list[Path]) -> None:
    """Send the reports by STOW-RS from a durable outbox in the --sr folder; say what was sent and what waits."""
    from cxr_edge.runtime.outputs.outbox import Outbox, outbox_status
    from cxr_edge.runtime.outputs.stow import parse_web_destination

    outbox = Outbox(sr_dir, [parse_web_destination(url) for url in urls])
    for report in reports:
        outbox.put(report)
    outbox.start()
    outbox.wait_empty(timeout=60)
    outbox.stop()
    for status in outbox_status(sr_dir):
        click.echo(f"cxr-edge: {status['destination']}: {status['sent']} sent, {status['refused']} refused, "
                   f"{status['backlog']} waiting in {sr_dir / 'outbox'}", err=True)


def _path(text: str | None) -> Path | None:
    return Path(text) if text is not None else None


def _deliver(prediction: object, classifier: object, outputs: object) -> dict:
    """The prediction's record, completed by the output steps the user asked for (heatmap, report, FHIR)."""
    from cxr_edge.runtime.outputs.steps import Outcome

    record = prediction.to_record()
    if outputs:
        source = Path(prediction.path) if prediction.error is None else None
        outputs.deliver(Outcome(prediction, record, Path(prediction.path).name, source, classifier.contract))
    prediction.display = prediction.cam = None  # free the image as soon as it is drawn
    return record


def _say_problems(prediction: object) -> None:
    for warning in prediction.warnings:
        click.echo(f"cxr-edge: warning: {printable(prediction.path)}: {printable(warning)}", err=True)
    if prediction.error is not None:
        click.echo(f"cxr-edge: error: {printable(prediction.path)}: {printable(prediction.error)}", err=True)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def info(model: str | None, as_json: bool) -> int:
    """Show a model's preprocessing contract, classes, provenance and file hashes (default: the shipped model)."""
    from rich.console import Console

    from cxr_edge.runtime.model.info import model_info, render_info

    details = model_info(model)
    if as_json:
        click.echo(json.dumps(details, indent=2))
    else:
        render_info(details, Console(highlight=False))
    return EXIT_OK


@click.command()
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Model file to compare (repeatable). Default: the shipped FP32 ONNX, INT8 ONNX and INT8 IR.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Training checkpoint for the PyTorch eager FP32 reference row (needs the export extra).")
@click.option("--data", "data_dirs", type=click.Path(file_okay=False, exists=True), multiple=True,
              help="Labelled class folders, read as `train --data` reads them (repeat for several): adds accuracy, "
                   "macro-F1, agreement with FP32 and accuracy per source; unreadable files are listed.")
@click.option("--backends", default=",".join([*local_engines(), REFERENCE]), show_default=True,
              callback=csv_list(str, (*ENGINES, REFERENCE)),
              help="Rows to run. kserve (a remote server, with --server) is added when --server is given.")
@click.option("--precisions", default="fp32,int8", show_default=True, callback=csv_list(str, ("fp32", "int8")))
@click.option("--batch", "batches", default="1,8,32", show_default=True, callback=csv_list(int),
              help="Batch sizes for throughput.")
@threads_option
@click.option("--runs", type=click.IntRange(5), default=100, show_default=True, help="Timed batch-1 runs per row.")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True)
@click.option("--end-to-end", "e2e", is_flag=True,
              help="Also time real files (up to 200 from --data) through decode, preprocess, inference and "
                   "post-processing.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write every figure here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None,
              help="PNG of latency distributions and throughput (needs the plot extra: matplotlib).")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False), default=None,
              help="The table as markdown, for a report.")
@server_options
def bench(models: tuple[str, ...], checkpoint: str | None, data_dirs: tuple[str, ...], backends: tuple[str, ...],
          precisions: tuple[str, ...], batches: tuple[int, ...], threads: int | None, runs: int, warmup: int,
          e2e: bool, json_out: str | None, plot_out: str | None, markdown_out: str | None, server: str | None,
          model_name: str | None, token_file: str | None, server_ca: str | None) -> int:
    """How fast, how accurate, how much headroom: every engine and precision side by side.

    With no arguments: the shipped model, FP32 and INT8, on ONNX Runtime and OpenVINO, on synthetic input.
    Rows are interleaved so that drift of the machine hits all alike; the header records CPU and versions. A row
    that cannot run here is listed with its reason; the others are still measured.
    """
    from rich.console import Console

    from cxr_edge.runtime.evaluation.bench import Reference, end_to_end_files, run_bench
    from cxr_edge.runtime.evaluation.bench_report import bench_markdown, bench_plot, bench_table
    from cxr_edge.runtime.extras import require

    if e2e and not data_dirs:
        raise click.UsageError("--end-to-end needs real files: give --data DIR")
    remote = [name for name, engine in ENGINES.items() if engine.remote]
    if server and not set(remote) & set(backends):
        backends = (*backends, *remote)
    if plot_out:
        require("matplotlib", purpose="--plot")  # before the benchmark, not after it
    reference = None
    if checkpoint is not None and REFERENCE in backends:
        reference = Reference(REFERENCE, "PyTorch eager", Path(checkpoint), _torch_runner(Path(checkpoint)))
    err = Console(stderr=True)
    with progress(err, None, spinner=True) as bar:
        task = bar.add_task("benchmarking", total=None)
        roots = [Path(d) for d in data_dirs]
        result = run_bench([Path(m) for m in models], reference=reference, data_dir=roots or None,
                           backends=backends, precisions=precisions, batches=batches, threads=threads, runs=runs,
                           warmup=warmup, end_to_end=end_to_end_files(roots) if e2e else (),
                           on_progress=lambda text: bar.update(task, description=text), server=server,
                           model_name=model_name, token_file=token_file, server_ca=server_ca)
    bench_table(result, Console(highlight=False))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    if markdown_out:
        Path(markdown_out).write_text(bench_markdown(result))
    if plot_out:
        bench_plot(result, plot_out)
    return EXIT_OK


def _torch_runner(checkpoint: Path):  # noqa: ANN202 (returns the bench's runner factory)
    """The build side's PyTorch runner for `checkpoint`, imported only when the bench asks for it."""

    def make(contract, threads):  # noqa: ANN001, ANN202
        from cxr_edge.runtime.extras import require

        require("torch", "timm", purpose="the PyTorch reference row")
        from cxr_edge.export.reference import torch_runner

        return torch_runner(checkpoint, contract, threads)

    return make


@click.command()
@click.option("--data", "data_dirs", type=click.Path(file_okay=False, exists=True), multiple=True,
              help="Labelled class folders whose images keep their source (repeat for several). Default: the "
                   "$CXR_DATA setting.")
@model_option
@backend_option()
@threads_option
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write every figure here.")
def audit(data_dirs: tuple[str, ...], model: str | None, backend: str, threads: int | None,
          json_out: str | None) -> int:
    """Does the model read the lungs or the hospital? Three shortcut checks over labelled folders.

    Per source: how often the label survives with the lungs blacked out (lower is better), and how often the
    heatmap's centre lies in the central lung box (higher is better); within each class with several sources,
    how well a linear probe on the model's features tells the sources apart (AUROC; 0.5 is best).
    """
    from rich.console import Console

    from cxr_edge.runtime.evaluation.audit import render_audit, run_audit
    from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs
    from cxr_edge.runtime.model.classifier import Classifier

    roots = resolve_data_dirs(data_dirs)
    classifier = Classifier.open(model, backend=backend, threads=threads, mode="throughput")
    err = Console(stderr=True)
    with progress(err, None, spinner=True) as bar:
        bar.add_task("auditing", total=None)
        result = run_audit(classifier, roots)
    render_audit(result, Console(highlight=False))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    return EXIT_OK


COMMANDS = (predict, info, bench, audit)
