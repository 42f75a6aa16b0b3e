"""The monitoring room: `drift` (is a site still like its own beginning?) over results already written."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cxr_edge.runtime.errors import CxrEdgeError

from .common import EXIT_DOUBTFUL, EXIT_OK

__all__ = ["COMMANDS", "drift"]


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--baseline", "baseline_size", type=click.IntRange(20, None), default=None, metavar="N",
              help="Judge against the first N results of the stream (default 200).")
@click.option("--baseline-from", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Judge against a baseline saved earlier with --save-baseline (the whole stream is then judged).")
@click.option("--save-baseline", type=click.Path(dir_okay=False), default=None,
              help="Save this stream's baseline, to judge later streams against it.")
@click.option("--window", type=click.IntRange(5, None), default=None, metavar="W",
              help="Results per sliding window compared with the baseline (default 40, or a fifth of a smaller "
                   "baseline).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write the report as JSON to this file ('-': standard output): alarms, windows, events.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="PNG of every signal over the stream with its threshold (needs the plot extra: matplotlib).")
def drift(sources: tuple[str, ...], baseline_size: int | None, baseline_from: str | None, save_baseline: str | None,
          window: int | None, json_out: str | None, plot: str | None) -> int:
    """Watch a site for drift without labels: are the images still like those of its beginning?

    SOURCES are `predict --format jsonl` files or output folders of watch, dicom-listen or score-archive, read in
    arrival order. The first results (--baseline) are the site's baseline; every later window of results is
    compared with it on the brightness, spread, edges and size of the images, the gate's score, the upright
    probability and the model's features, each against the same finding's baseline so that more pneumonias
    alone raise nothing. Thresholds are set by resampling the baseline for about one false alarm per 10,000
    images. A new device (manufacturer, model or software version) is an event at its first image; the share of
    each finding is reported per window, never an alarm by itself.

    Exit code 0: no alarm; 3: at least one alarm; 1: the sources could not be read.
    """
    from dataclasses import replace

    from rich.console import Console

    from cxr_edge.runtime.extras import require
    from cxr_edge.runtime.monitoring.drift import DriftConfig, DriftMonitor, drift_report, plot_drift, read_results

    if plot:
        require("matplotlib", purpose="--plot")
    config = DriftConfig.for_baseline(baseline_size) if baseline_size else DriftConfig()
    config = replace(config, window=window) if window else config
    try:
        monitor = DriftMonitor.from_baseline(Path(baseline_from), config if window else None) if baseline_from \
            else DriftMonitor(config)
        report = drift_report(read_results(sources), monitor, series=bool(plot))
    except (OSError, ValueError, KeyError) as exc:
        raise CxrEdgeError(f"cannot read the results: {exc}") from exc
    if save_baseline:
        monitor.save_baseline(Path(save_baseline))
    if plot:
        plot_drift(report, Path(plot))
    report.pop("series", None)
    if json_out:
        text = json.dumps(report, indent=2) + "\n"
        if json_out == "-":
            click.echo(text, nl=False)
        else:
            Path(json_out).write_text(text)
    if json_out != "-":
        _print(report, Console(highlight=False))
    return EXIT_DOUBTFUL if report["alarms"] else EXIT_OK


def _print(report: dict, console: object) -> None:
    """Alarms and events as a table, then a one-line verdict."""
    from rich.table import Table

    if not report["baseline_complete"]:
        console.print(f"{report['images']} results: fewer than the {report['config']['baseline']} the baseline "
                      "needs; nothing judged yet")
        return
    if report["alarms"] or report["events"]:
        table = Table("image", "time", "what", "signal", "statistic", "threshold", "until")
        for alarm in report["alarms"]:
            table.add_row(str(alarm["index"]), str(alarm["at"] or "-"), "alarm", alarm["signal"],
                          f"{alarm['statistic']:.1f}", f"{alarm['threshold']:.1f}", str(alarm.get("ended", "still")))
        for event in report["events"]:
            table.add_row(str(event["index"]), str(event["at"] or "-"), "new device", event["device"], "", "", "")
        console.print(table)
    kinds = sorted({a["signal"] for a in report["alarms"]})
    verdict = f"ALARM on {', '.join(kinds)}" if kinds else "no drift"
    console.print(f"{report['images']} results, baseline {report['config']['baseline']}, window "
                  f"{report['config']['window']}: {verdict}; {len(report['events'])} new devices")


COMMANDS = (drift,)
