"""The click group: help, version, `--debug`, and the one place errors become lines and exit codes."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

import click

from cxr_edge.runtime.errors import CxrEdgeError, first_line, printable

from . import build, edge, live, monitor, scale
from .common import EXIT_ERROR, EXIT_OK

__all__ = ["cli", "main", "CxrEdgeGroup"]


class CxrEdgeGroup(click.Group):
    """Turns every error into one line on stderr and an exit code, in one place.

    Expected failures (`CxrEdgeError`) print their message; anything else is an internal error. Both keep their
    cause chain, which ``--debug`` shows as a full traceback.
    """

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
            click.echo(f"cxr-edge: error: {printable(exc)}", err=True)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.echo("cxr-edge: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if debug:
                raise
            click.echo(f"cxr-edge: internal error: {type(exc).__name__}: {printable(first_line(exc))} (run with "
                       "--debug for details)", err=True)
            sys.exit(EXIT_ERROR)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


@click.group(cls=CxrEdgeGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cxr-edge", prog_name="cxr-edge")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Chest X-ray classification at the edge: normal, COVID-19, bacterial or viral pneumonia.

    Edge side (numpy, OpenCV, ONNX Runtime, OpenVINO): `predict` classifies PNG, JPEG, JPEG 2000 and DICOM images
    in milliseconds, `info` shows what a model file contains, `bench` measures every engine and precision
    against the one-minute budget per image, `audit` checks what a model looks at. Live mode: `watch`
    classifies every file dropped into a folder, `dicom-listen` every image an X-ray console or PACS sends over
    DICOM (coded reports and heatmaps into the study, forwarded to PACS), `status-page` shows either in a
    browser.

    More than one workstation: `export-repository` lays the model out for NVIDIA Triton or OpenVINO Model
    Server (`--backend kserve --server URL` then infers there), `score-archive` scores an archive on Ray.

    Build side (needs the export extra: torch, timm, nncf): `train` fits a classifier on a class-folder
    dataset, `export` writes it to ONNX, `quantize` makes INT8 models for ONNX Runtime or OpenVINO,
    `calibration-manifest` records a calibration set by file hashes.

    Exit codes: 0 success, 1 usage or model error, 2 some inputs failed (the rest were processed), 3 with --strict:
    every input read, but some were rejected or uncertain.

    Not a medical device: results support, never replace, a radiologist's reading.
    Run `cxr-edge COMMAND --help` for each command's options.
    """
    quiet_libraries(debug)


def silence_native_stderr() -> None:
    """Send what C libraries print on file descriptor 2 (libpng's and libjpeg's "Corrupt JPEG data...", libtiff's
    warnings) to /dev/null, while Python's own stderr (cxr-edge's lines, tables, progress bars, logging) keeps
    the real one.

    Those libraries write straight to the descriptor, past Python, and their lines would stand beside the one
    line cxr-edge prints for the same file with the reason already in it. Nothing changes where stderr is not
    descriptor 2 (inside a test runner) or with ``--debug``, which shows them.
    """
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):
        return
    sys.stderr.flush()
    real = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")


class _PrintableFormatter(logging.Formatter):
    """Log lines with control characters escaped: a file name or an AE title cannot drive the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def quiet_libraries(debug: bool) -> None:
    """cxr-edge's own one-line messages only; the libraries' remarks (OpenCV, Pillow, pydicom, pynetdicom) go
    to ``--debug``. pydicom never logs at all: its remarks quote header values, patient fields among them."""
    if not debug:
        silence_native_stderr()
    handler = logging.StreamHandler()
    handler.setFormatter(_PrintableFormatter("cxr-edge: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("PIL").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    logging.getLogger("pynetdicom").setLevel(logging.INFO if debug else logging.CRITICAL + 1)  # tracebacks too
    os.environ.setdefault("OPENCV_LOG_LEVEL", "WARNING" if debug else "SILENT")  # read when cv2 is first imported
    if "cv2" in sys.modules:
        sys.modules["cv2"].utils.logging.setLogLevel(3 if debug else 0)
    if debug:
        logging.captureWarnings(True)
    else:
        warnings.simplefilter("ignore")


for room in (build, edge, live, monitor, scale):
    for command in room.COMMANDS:
        cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli.main()
