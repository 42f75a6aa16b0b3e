"""The `cxr-edge` command: one click group, a thin shell over the library.

Each command imports its side lazily, so that edge commands never load torch. Every expected failure is a
`CxrEdgeError`, printed here as one line with a non-zero exit code; tracebacks only with `--debug`.

Exit codes: 0 success, 1 usage or model error, 2 some inputs failed while the rest were processed.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from cxr_edge.export.config import ARCH_NAMES, TrainConfig
from cxr_edge.runtime.errors import CxrEdgeError

__all__ = ["cli", "main"]

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 2
_DEFAULTS = TrainConfig()

_MODEL_OPTION = click.option("--model", type=click.Path(dir_okay=False), default=None,
                             help="Model file (.onnx, or OpenVINO .xml). Default: the shipped INT8 model.")
_BACKEND_OPTION = click.option("--backend", type=click.Choice(["auto", "ort", "openvino"]), default="auto",
                               show_default=True, help="Inference engine (see `predict --help`).")
_THREADS_OPTION = click.option("--threads", type=click.IntRange(1), default=None,
                               help="Inference threads (default: all cores).")


class _Group(click.Group):
    """Turns every error into one line on stderr and an exit code, in one place."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> None:  # type: ignore[override]
        debug = "--debug" in (sys.argv[1:] if args is None else list(args))
        try:
            code = super().main(args=args, prog_name=prog_name or "cxr-edge", standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("cxr-edge: interrupted", err=True)
            sys.exit(130)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:  # usage errors: exit 1, not click's 2 (2 means "some inputs failed")
            exc.show()
            sys.exit(EXIT_ERROR)
        except CxrEdgeError as exc:
            if debug:
                raise
            click.echo(f"cxr-edge: error: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("cxr-edge: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if debug:
                raise
            click.echo(f"cxr-edge: internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
                       err=True)
            sys.exit(EXIT_ERROR)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cxr-edge", prog_name="cxr-edge")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Chest X-ray classification at the edge: normal, COVID-19, bacterial or viral pneumonia.

    Edge side (numpy, OpenCV, ONNX Runtime, OpenVINO): `predict` classifies PNG, JPEG and DICOM images in
    milliseconds, `info` shows what a model file contains, `bench` measures every engine and precision
    against the one-minute budget per image. Live mode: `watch` classifies every file dropped into a folder,
    `dicom-listen` every image an X-ray console or PACS sends over DICOM.

    Build side (needs the export extra: torch, timm, nncf): `train` fits a classifier on a class-folder
    dataset, `export` writes it to ONNX, `quantize` makes INT8 models for ONNX Runtime or OpenVINO,
    `calibration-manifest` records a calibration set by file hashes.

    Exit codes: 0 success, 1 usage or model error, 2 some inputs failed (the rest were processed).

    Not a medical device: results support, never replace, a radiologist's reading.
    Run `cxr-edge COMMAND --help` for each command's options.
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="cxr-edge: %(levelname)s: %(message)s")
    logging.getLogger("PIL").setLevel(logging.WARNING)


@cli.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Class-folder dataset (folders normal, covid19, bacterial_pneumonia, viral_pneumonia or aliases). "
                   "Default: $CXR_DATA, else ../shared/datasets/cxr4 beside the source checkout.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="New folder for the run: checkpoint.pt, history.json, metrics.json, curves.png, "
                   "confusion_matrix.png. An existing run is never overwritten.")
@click.option("--arch", type=click.Choice(ARCH_NAMES), default=_DEFAULTS.arch, show_default=True,
              help="Network. efficientnet_lite0 starts from packaged ImageNet weights; resnet18/50 only with "
                   "--weights; simple_cnn trains from scratch.")
@click.option("--weights", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Starting weights file (a torchvision-format ImageNet checkpoint for the ResNets).")
@click.option("--epochs", type=click.IntRange(1), default=_DEFAULTS.epochs, show_default=True,
              help="Upper bound; early stopping on validation loss usually ends sooner.")
@click.option("--batch-size", type=click.IntRange(2), default=_DEFAULTS.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_DEFAULTS.lr, show_default=True,
              help="Peak AdamW learning rate after warm-up.")
@click.option("--image-size", type=click.IntRange(32, 1024), default=_DEFAULTS.image_size, show_default=True,
              help="Square network input size, written into the model's preprocessing contract.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True,
              help="Seed of training randomness: initialisation, augmentation, batch order.")
@click.option("--split-seed", type=int, default=_DEFAULTS.split_seed, show_default=True,
              help="Seed of the stratified train/validation split.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=_DEFAULTS.val_fraction,
              show_default=True, help="Share of each class held out for validation. 0 trains on every image for "
              "exactly --epochs epochs, with no validation and no early stopping (for release models).")
@click.option("--patience", type=click.IntRange(1), default=_DEFAULTS.patience, show_default=True,
              help="Epochs without a lower validation loss before stopping.")
@click.option("--no-pretrained", is_flag=True, help="Start from random weights even where ImageNet weights exist.")
@click.option("--no-freeze", is_flag=True, help="Also train the early layers that are frozen by default.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads (default: all cores).")
def train(data_dir: str | None, out_dir: str, arch: str, weights: str | None, epochs: int, batch_size: int,
          lr: float, image_size: int, seed: int, split_seed: int, val_fraction: float, patience: int,
          no_pretrained: bool, no_freeze: bool, threads: int | None) -> int:
    """Train a 4-class classifier by transfer learning and write a checkpoint with its preprocessing contract.

    Prints a progress bar per epoch and, at the end, per-class precision, recall and F1 on the validation split.
    """
    from rich.console import Console

    from cxr_edge.export.train import train as run_training
    from cxr_edge.runtime.dataset import resolve_data_dir

    console = Console(stderr=True)
    config = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size, seed=seed,
                         split_seed=split_seed, val_fraction=val_fraction, patience=patience,
                         freeze_early=not no_freeze, weights=weights, pretrained=not no_pretrained, threads=threads)
    result = run_training(config, resolve_data_dir(data_dir), out_dir, console=console)
    if result.report is not None:
        _print_report(result.report, Console(), title=f"Validation, epoch {result.best_epoch} of "
                                                      f"{result.epochs_run} ({result.seconds / 60:.1f} min)")
    written = sorted(p.name for p in result.out_dir.iterdir())
    click.echo(f"wrote {', '.join(written)} in {result.out_dir} ({result.seconds / 60:.1f} min)")
    return EXIT_OK


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@_MODEL_OPTION
@click.option("--backend", type=click.Choice(["auto", "ort", "openvino"]), default="auto", show_default=True,
              help="Inference engine. auto: OpenVINO for .xml; for .onnx whichever was measured faster here.")
@_THREADS_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv"]), default=None,
              help="Output: table (default on a terminal), jsonl (default otherwise) or csv.")
@click.option("--cam-dir", type=click.Path(file_okay=False), default=None,
              help="Write a heatmap overlay PNG per image here (<input name>.cam.png); never overwrites.")
@click.option("--recursive", "-r", is_flag=True, help="Descend into subfolders of folder arguments.")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Images per inference call (default: 1 for a single file, 8 for many).")
@click.option("--show-phi", is_flag=True, help="Include DICOM patient name and ID in the output (never in logs).")
def predict(paths: tuple[str, ...], model: str | None, backend: str, threads: int | None, fmt: str | None,
            cam_dir: str | None, recursive: bool, batch_size: int | None, show_phi: bool) -> int:
    """Classify X-rays: files, folders and glob patterns of PNG, JPEG, BMP, TIFF or DICOM.

    Every input gets a result in input order; an unreadable one gets a one-line reason and the rest are still
    classified. Exit code 0: all classified; 2: some inputs failed; 1: usage or model error.
    """
    from pathlib import Path

    from rich.console import Console

    from cxr_edge.runtime.cam import overlay, write_overlay
    from cxr_edge.runtime.classifier import Classifier
    from cxr_edge.runtime.outputs import Summary, make_writer
    from cxr_edge.runtime.pipeline import expand_inputs, predict_stream

    items = expand_inputs(paths, recursive=recursive)
    many = len(items) > 1
    err = Console(stderr=True, highlight=False)
    classifier = Classifier.open(model, backend=backend, threads=threads, mode="throughput" if many else "latency")
    fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
    out = Console(highlight=False)
    title = f"{classifier.path.name} on {classifier.backend.name} ({classifier.backend_reason})"
    writer = make_writer(fmt, sys.stdout, out, classifier.contract.class_names, show_phi=show_phi, title=title)
    if fmt != "table":
        click.echo(f"cxr-edge: model {classifier.path} on {classifier.backend.name} ({classifier.backend_reason})",
                   err=True)
    want_cam = cam_dir is not None
    if want_cam and not classifier.has_cam:
        raise CxrEdgeError(f"{classifier.path}: the model has no 'cam' output, so --cam-dir cannot draw heatmaps")
    inputs = {p.resolve() for p in items if isinstance(p, Path)}
    summary = Summary()
    progress = _progress(err, len(items))
    with progress:
        task = progress.add_task("classifying", total=len(items))
        for prediction in predict_stream(classifier, items, batch_size=batch_size or (8 if many else 1),
                                         cam=want_cam):
            for warning in prediction.warnings:
                click.echo(f"cxr-edge: warning: {prediction.path}: {warning}", err=True)
            if prediction.error is not None:
                click.echo(f"cxr-edge: error: {prediction.path}: {prediction.error}", err=True)
            elif want_cam and prediction.cam is not None and prediction.display is not None:
                written = write_overlay(Path(cam_dir), prediction.path, overlay(prediction.display, prediction.cam),
                                        protected=inputs)
                prediction.display = prediction.cam = None  # free the image as soon as it is drawn
                logging.getLogger(__name__).debug("heatmap %s", written)
            summary.add(prediction)
            writer.write(prediction)
            progress.advance(task)
    writer.close(summary)
    return EXIT_PARTIAL if summary.failures else EXIT_OK


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def info(model: str | None, as_json: bool) -> int:
    """Show a model's preprocessing contract, classes, provenance and file hashes (default: the shipped model)."""
    import json

    from rich.console import Console

    from cxr_edge.runtime.model_info import model_info

    details = model_info(model)
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return EXIT_OK
    _print_info(details, Console(highlight=False))
    return EXIT_OK


@cli.command()
@click.argument("in_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Results folder: results/ (one JSON per image), done/ and failed/ (the inputs, moved), "
                   "processing/ (in flight); created if missing.")
@_MODEL_OPTION
@_BACKEND_OPTION
@_THREADS_OPTION
@click.option("--cam", is_flag=True, help="Also write a heatmap overlay per image to OUT/cam/.")
@click.option("--settle", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="Seconds a file's size must stay unchanged before it counts as complete (when its writer's "
                   "close is not seen: polling, files present at start).")
@click.option("--poll", type=click.FloatRange(0.05), default=None,
              help="List the folder every POLL seconds instead of using inotify (network shares).")
@click.option("--once", is_flag=True, help="Process what is in the folder (and unfinished work), then exit.")
def watch(in_dir: str, out_dir: str, model: str | None, backend: str, threads: int | None, cam: bool,
          settle: float, poll: float | None, once: bool) -> int:
    """Classify every image that arrives in IN_DIR, exactly once, until stopped (Ctrl-C or SIGTERM).

    A file counts as arrived when its writer closes or renames it (names like *.part, *.tmp and dot-files are
    ignored until then). Each image gets OUT/results/<name>.<hash>.json (the `predict` jsonl record plus its
    SHA-256 and arrival and finish times) and moves to OUT/done/, or to OUT/failed/ with a .reason.txt. Files
    already in IN_DIR are processed too. After a crash or kill -9, restarting finishes the work in flight: no
    image is lost and none gets two results. Prints one line per image and a summary whenever it goes idle.
    """
    from pathlib import Path

    from cxr_edge.runtime.classifier import Classifier
    from cxr_edge.runtime.live.watch import FolderWatcher

    classifier = Classifier.open(model, backend=backend, threads=threads, mode="latency")

    def show(record: dict, repeated: bool) -> None:
        name = _printable(Path(record["path"]).name)
        _echo_live(record, name, "already classified: kept the earlier result" if repeated else None)

    watcher = FolderWatcher(in_dir, out_dir, classifier, cam=cam, settle_s=settle, poll_s=poll, on_record=show,
                            on_idle=lambda summary: click.echo(f"-- {summary.line()}; waiting", err=True))
    click.echo(f"cxr-edge: watching {in_dir} ({'once' if once else watcher.mode}) with {classifier.path.name} on "
               f"{classifier.backend.name}; results in {out_dir}", err=True)
    with _stop_on_signals(watcher.stop):
        summary = watcher.run(once=once)
    click.echo(f"cxr-edge: stopped: {summary.line()}", err=True)
    return EXIT_OK


@cli.command("dicom-listen")
@click.option("--port", type=click.IntRange(0, 65535), default=11112, show_default=True,
              help="TCP port (104 needs root or CAP_NET_BIND_SERVICE).")
@click.option("--ae-title", default="CXREDGE", show_default=True, help="This node's AE title (1-16 characters).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Results folder: incoming/, done/, failed/ (instances), results/ (JSON per SOP Instance UID), "
                   "sr/ (Basic Text SR per instance), quarantine/ (refused datasets with their reasons).")
@_MODEL_OPTION
@_BACKEND_OPTION
@_THREADS_OPTION
@click.option("--allow", multiple=True, metavar="AE",
              help="Accept associations only from this calling AE title (repeat for several). Default: any.")
@click.option("--host", default="", help="Address to listen on (default: every interface).")
@click.option("--keep-phi", is_flag=True, help="Also write patient name and ID into the JSON results.")
def dicom_listen(port: int, ae_title: str, out_dir: str, model: str | None, backend: str, threads: int | None,
                 allow: tuple[str, ...], host: str, keep_phi: bool) -> int:
    """Receive radiographs over DICOM (C-STORE) and classify each one, until stopped (Ctrl-C or SIGTERM).

    Accepts Computed Radiography, Digital X-Ray (for presentation and for processing) and Secondary Capture
    images, uncompressed, JPEG, JPEG 2000 or RLE, and answers C-ECHO. Each instance is stored before Success is
    returned, then classified from a queue: OUT/results/<SOP Instance UID>.json and OUT/sr/<UID>.sr.dcm, a Basic
    Text SR in the image's study. Bad datasets get a failure status and a copy in OUT/quarantine/. Logs name
    instances by UID only; patient identifiers are never printed.
    """
    import threading

    from cxr_edge.runtime.classifier import Classifier
    from cxr_edge.runtime.live.dicom_listener import DicomListener

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines describe every association
    classifier = Classifier.open(model, backend=backend, threads=threads, mode="latency")

    def show(record: dict) -> None:
        _echo_live(record, record["sop_instance_uid"], None, latency=record.get("arrival_to_result_ms"))

    listener = DicomListener(out_dir, classifier, port=port, ae_title=ae_title, host=host, allow=allow or None,
                             keep_phi=keep_phi, on_record=show)
    listener.start()
    click.echo(f"cxr-edge: listening as {listener.ae_title} on port {listener.port} with {classifier.path.name} on "
               f"{classifier.backend.name}; results in {out_dir}"
               + (f"; calling AEs allowed: {', '.join(allow)}" if allow else ""), err=True)
    stopped = threading.Event()
    with _stop_on_signals(stopped.set):
        while not stopped.wait(60):
            click.echo(f"-- {listener.summary.line()}, {listener.quarantined} quarantined", err=True)
    listener.stop()
    click.echo(f"cxr-edge: stopped: {listener.summary.line()}, {listener.quarantined} quarantined", err=True)
    return EXIT_OK


def _printable(name: str) -> str:
    """A file name safe to print on a terminal (control characters shown as '?')."""
    return "".join(c if c.isprintable() else "?" for c in name)


def _echo_live(record: dict, name: str, note: str | None, latency: float | None = None) -> None:
    """One line per live result: time, input, label, confidence, latency (or the reason it failed)."""
    clock = record["finished"][11:23]
    if note:
        click.echo(f"{clock}  {name}  {note}")
    elif record["error"] is not None:
        click.echo(f"{clock}  {name}  FAILED: {record['error']}")
    else:
        label = record["label"]
        ms = latency if latency is not None else record["latency_ms"]["total"]
        warn = "  (warning: " + "; ".join(record["warnings"]) + ")" if record.get("warnings") else ""
        click.echo(f"{clock}  {name}  {label:<19} {record['probabilities'][label]:6.1%}  {ms:7.1f} ms{warn}")


class _stop_on_signals:  # noqa: N801 (used as a context manager, reads like one)
    """Route SIGINT and SIGTERM to `stop` (finish the image in hand, then return) while inside the block."""

    def __init__(self, stop: Any) -> None:
        self.stop = stop
        self.previous: dict = {}

    def __enter__(self) -> None:
        import signal

        def handler(signum: int, frame: Any) -> None:
            click.echo("cxr-edge: stopping after the image in hand", err=True)
            self.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, handler)

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, previous in self.previous.items():
            signal.signal(sig, previous)


def _print_info(details: dict, console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    for section in ("model", "contract", "provenance", "files"):
        values = details.get(section) or {"(none recorded)": ""}
        table = Table(title=section, title_justify="left", show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in values.items():
            table.add_row(Text(str(key)), Text(value if isinstance(value, str) else json.dumps(value)))
        console.print(table)


def _progress(console: Any, total: int) -> Any:
    """A progress bar on stderr for long work on a terminal; silent otherwise (pipes, single files)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=total < 2 or not console.is_terminal)


def _csv_list(kind: type, allowed: tuple | None = None) -> Any:
    """A click callback turning "a,b,c" into a validated tuple."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> tuple:
        try:
            items = tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of {kind.__name__}") from None
        bad = [v for v in items if allowed is not None and v not in allowed]
        if bad or not items:
            raise click.BadParameter(f"choose from {', '.join(map(str, allowed or ()))}; got {value!r}")
        return items

    return parse


@cli.command()
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Model file to compare (repeatable). Default: the shipped FP32 ONNX, INT8 ONNX and INT8 IR.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Training checkpoint for the PyTorch eager FP32 reference row (needs torch).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Labelled class folders, read as `train --data` reads them: adds accuracy, macro-F1 and "
                   "agreement with FP32; unreadable files are listed.")
@click.option("--backends", default="ort,openvino,torch", show_default=True,
              callback=_csv_list(str, ("ort", "openvino", "torch")))
@click.option("--precisions", default="fp32,int8", show_default=True, callback=_csv_list(str, ("fp32", "int8")))
@click.option("--batch", "batches", default="1,8,32", show_default=True, callback=_csv_list(int),
              help="Batch sizes for throughput.")
@_THREADS_OPTION
@click.option("--runs", type=click.IntRange(5), default=100, show_default=True, help="Timed batch-1 runs per row.")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True)
@click.option("--end-to-end", "e2e", is_flag=True,
              help="Also time real files (from --data) through decode, preprocess, inference, post-processing.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write every figure here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None,
              help="PNG of latency distributions and throughput (needs matplotlib).")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False), default=None,
              help="The table as markdown, for a report.")
def bench(models: tuple[str, ...], checkpoint: str | None, data_dir: str | None, backends: tuple[str, ...],
          precisions: tuple[str, ...], batches: tuple[int, ...], threads: int | None, runs: int, warmup: int,
          e2e: bool, json_out: str | None, plot_out: str | None, markdown_out: str | None) -> int:
    """How fast, how accurate, how much headroom: every engine and precision side by side.

    With no arguments: the shipped model, FP32 and INT8, on ONNX Runtime and OpenVINO, on synthetic input.
    Rows are interleaved so that drift of the machine hits all alike; the header records CPU and versions.
    """
    from pathlib import Path

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from cxr_edge.runtime.bench import run_bench
    from cxr_edge.runtime.bench_report import bench_markdown, bench_plot, bench_table
    from cxr_edge.runtime.images import IMAGE_SUFFIXES

    if e2e and data_dir is None:
        raise click.UsageError("--end-to-end needs real files: give --data DIR")
    files = sorted(p for p in Path(data_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:200] if e2e else []
    err = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("benchmarking", total=None)
        result = run_bench([Path(m) for m in models], checkpoint=Path(checkpoint) if checkpoint else None,
                           data_dir=Path(data_dir) if data_dir else None, backends=backends, precisions=precisions,
                           batches=batches, threads=threads, runs=runs, warmup=warmup, end_to_end=files,
                           on_progress=lambda text: progress.update(task, description=text))
    bench_table(result, Console(highlight=False))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    if markdown_out:
        Path(markdown_out).write_text(bench_markdown(result))
    if plot_out:
        bench_plot(result, plot_out)
    return EXIT_OK


@cli.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="The .onnx file to write (never overwritten).")
@click.option("--check-data", type=click.Path(file_okay=False), default=None,
              help="Labelled data whose images prove parity with PyTorch (default: $CXR_DATA or the shared set; "
                   "synthetic inputs when none is found).")
def export_command(checkpoint: str, out: str, check_data: str | None) -> int:
    """Export a training checkpoint to ONNX with its preprocessing contract and activation-map output.

    Checks before it returns: onnx.checker, probabilities within 1e-4 of PyTorch on ONNX Runtime and on
    OpenVINO (which must compile the model).
    """
    from cxr_edge.export.data import stratified_split
    from cxr_edge.export.to_onnx import export_onnx
    from cxr_edge.runtime.dataset import DatasetError, resolve_data_dir, scan_dataset

    images: list = []
    try:
        dataset = scan_dataset(resolve_data_dir(check_data))
        _, val = stratified_split(dataset.samples, 0.2, 0)
        images = [next(s.path for s in val if s.label == label) for label in sorted({s.label for s in val})]
    except DatasetError as exc:
        if check_data:
            raise
        click.echo(f"cxr-edge: warning: no labelled data for the parity check ({exc}); using synthetic inputs",
                   err=True)
    report = export_onnx(checkpoint, out, check_images=images)
    source = f"{report.images} real images" if report.real_images else f"{report.images} synthetic inputs"
    click.echo(f"wrote {report.path}: parity with PyTorch on {source}: max |difference| "
               f"{report.max_diff_ort:.1e} (ONNX Runtime), {report.max_diff_openvino:.1e} (OpenVINO)")
    return EXIT_OK


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="INT8 model to write: .onnx for --backend ort, .xml (+ .bin) for openvino. Never overwritten.")
@click.option("--backend", type=click.Choice(["ort", "openvino"]), default="ort", show_default=True,
              help="ort: ONNX Runtime static quantisation (QDQ). openvino: NNCF post-training quantisation to IR.")
@click.option("--calib", "calib_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of calibration images (any images; ideally from this site's X-ray machine).")
@click.option("--calib-manifest", type=click.Path(dir_okay=False), default=None,
              help="A calibration_data/ manifest, resolved against --data (files must match their SHA-256).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Data folder a manifest refers to (default: $CXR_DATA or the shared set).")
@click.option("--val", "val_dir", type=click.Path(file_okay=False), default=None,
              help="Labelled class-folder dataset for accuracy, macro-F1 and agreement in the report.")
@click.option("--accuracy-aware", is_flag=True,
              help="openvino only: keep the most harmful layers FP32 until accuracy drops by at most --max-drop.")
@click.option("--max-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the JSON report (default: next to the output, <out>.report.json).")
def quantize(model: str, out: str, backend: str, calib_dir: str | None, calib_manifest: str | None,
             data_dir: str | None, val_dir: str | None, accuracy_aware: bool, max_drop: float,
             report_path: str | None) -> int:
    """Quantise an exported FP32 ONNX model to INT8 and compare the two in the same run.

    The report gives FP32/INT8 top-1 agreement, accuracy and macro-F1 of both (with --val), sizes and latency.
    """
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from cxr_edge.export.calibration import resolve_calibration
    from cxr_edge.export.quantize import quantize as run_quantize
    from cxr_edge.runtime.dataset import resolve_data_dir, scan_dataset

    if accuracy_aware and backend != "openvino":
        raise click.UsageError("--accuracy-aware needs --backend openvino")
    if accuracy_aware and val_dir is None:
        raise click.UsageError("--accuracy-aware needs a labelled --val folder")
    data = resolve_data_dir(data_dir) if calib_manifest else None
    files = resolve_calibration(calib_dir, calib_manifest, data)
    labelled = scan_dataset(val_dir).samples if val_dir else None
    err = Console(stderr=True)
    total = len(files) + (len(labelled) if labelled else 0)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as progress:
        task = progress.add_task("decoding calibration images", total=total)
        report = run_quantize(model, out, calibration=files, backend=backend, labelled=labelled,
                              accuracy_aware=accuracy_aware, max_drop=max_drop,
                              on_progress=lambda: progress.advance(task))
    for path, reason in report.skipped:
        click.echo(f"cxr-edge: warning: skipped {path}: {reason}", err=True)
    target = Path(report_path) if report_path else Path(out).with_name(Path(out).name + ".report.json")
    target.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    _print_quant_report(report.comparison, Console(highlight=False))
    click.echo(f"wrote {out} and {target}")
    return EXIT_OK


def _print_quant_report(comparison: dict, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"FP32 vs INT8 on {comparison['backend']} ({comparison['images']} images, "
                        f"{comparison['threads']} threads, batch 1)", title_justify="left")
    for column in ("", "FP32", "INT8"):
        table.add_column(column, justify="right" if column else "left")
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        if key in comparison.get("fp32", {}):
            table.add_row(label, f"{comparison['fp32'][key]:.3f}", f"{comparison['int8'][key]:.3f}")
    table.add_row("size (MB)", f"{comparison['size_mb']['fp32']:.1f}", f"{comparison['size_mb']['int8']:.1f}")
    latency = comparison["latency_ms"]
    table.add_row("latency p50 (ms)", f"{latency['fp32']:.2f}", f"{latency['int8']:.2f}")
    console.print(table)
    console.print(f"top-1 agreement {comparison['agreement']:.1%}; INT8 runs {comparison['speedup']:.2f}x as fast")


@cli.command("calibration-manifest")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Labelled class-folder dataset (default: $CXR_DATA or the shared set).")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="Manifest to write, e.g. calibration_data/site.tsv (never overwritten).")
@click.option("--per-class", type=click.IntRange(1), default=64, show_default=True, help="Images per class.")
@click.option("--seed", type=int, default=0, show_default=True)
def calibration_manifest(data_dir: str | None, out: str, per_class: int, seed: int) -> int:
    """Write a calibration manifest: names, classes and hashes of a stratified subset (never the images)."""
    from cxr_edge.export.calibration import write_manifest
    from cxr_edge.runtime.dataset import resolve_data_dir, scan_dataset

    dataset = scan_dataset(resolve_data_dir(data_dir))
    chosen = write_manifest(dataset, out, per_class=per_class, seed=seed)
    click.echo(f"wrote {out}: {len(chosen)} images from {dataset.root}")
    return EXIT_OK


def _print_report(report: dict, console: Any, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("class", "precision", "recall", "F1", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in report["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    table.add_section()
    total = sum(r["support"] for r in report["per_class"].values())
    table.add_row("accuracy", "", "", f"{report['accuracy']:.3f}", str(total))
    table.add_row("macro-F1", "", "", f"{report['macro_f1']:.3f}", str(total))
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    cli.main()


if __name__ == "__main__":
    main()
