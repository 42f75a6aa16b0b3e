"""The monitoring room: `drift` (is a site still like its own beginning?) over results already written."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cxr_edge.runtime.errors import CxrEdgeError

from .common import EXIT_DOUBTFUL, EXIT_OK, backend_option, model_option, threads_option

__all__ = ["COMMANDS", "drift", "validate"]


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


@click.command()
@click.option("--data", "data_dirs", multiple=True, required=True, type=click.Path(file_okay=False, exists=True),
              help="The site's labelled films: class folders (normal, covid19, bacterial_pneumonia, "
                   "viral_pneumonia, or pneumonia for a pneumonia of unknown type), a MANIFEST.csv beside them for "
                   "patients, ages and views. Repeatable.")
@model_option
@backend_option()
@threads_option
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="The report as JSON.")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False), default=None,
              help="The report as Markdown, for the site's acceptance file.")
@click.option("--write-site-model", type=click.Path(dir_okay=False), default=None, metavar="OUT.xml",
              help="Write a copy of the model (OpenVINO IR) with the calibration and abstention threshold refitted "
                   "on these films; the model given is never changed.")
def validate(data_dirs: tuple[str, ...], model: str | None, backend: str, threads: int | None, json_out: str | None,
             markdown_out: str | None, write_site_model: str | None) -> int:
    """Check the model on a site's own labelled films before go-live, against its model card.

    Reports accuracy and every finding's recall with 95 % intervals over patients, the confusion matrix, the
    calibration before and after refitting on the site's films, the gate's refusals, how far the site's films
    lie from the validation films, and a verdict per finding against the model card (for example "normal
    recall 0.71 (0.64-0.78), below the card's interval from 0.86: do not deploy without retraining").

    Exit code 0: every finding within the card; 3: a finding below it; 1: the folders hold no labels.
    """
    from rich.console import Console

    from cxr_edge.runtime.evaluation.validate import validate_site
    from cxr_edge.runtime.evaluation.validate import write_site_model as write_copy
    from cxr_edge.runtime.model.classifier import Classifier

    classifier = Classifier.open(model, backend=backend, threads=threads, mode="throughput")
    report = validate_site(classifier, [Path(d) for d in data_dirs])
    if write_site_model:
        report["site_model"] = str(write_copy(classifier.path, Path(write_site_model), report["calibration"]))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2, default=float) + "\n")
    text = validation_markdown(report)
    if markdown_out:
        Path(markdown_out).write_text(text)
    Console(highlight=False).print(text, markup=False)
    return EXIT_DOUBTFUL if any("below the card" in line for line in report["verdict"]) else EXIT_OK


def validation_markdown(report: dict) -> str:
    """The acceptance report as Markdown: findings, status, calibration, distance, verdict."""
    figures, calibration, distance = report["figures"], report["calibration"], report["distance"]
    lines = ["# Site acceptance check", "", f"{report['images']} films ({report['unreadable']} unreadable); "
             f"accuracy {figures['accuracy']:.3f}; " + ", ".join(f"{k} {v}" for k, v in report["status"].items()),
             "", "| finding | films | recall (95 % interval) | precision |", "| --- | --- | --- | --- |"]
    for name, row in figures["findings"]["per_finding"].items():
        if not row["images"]:
            continue
        lines.append(f"| {name} | {row['images']} | {row['recall']:.2f} ({row['ci95'][0]:.2f}-{row['ci95'][1]:.2f})"
                     f" | {row['precision']:.2f} |")
    names = figures["findings"]["names"]
    lines += ["", "Confusion matrix of the findings (truth in rows): " + "; ".join(
        f"{truth}: " + ", ".join(f"{n} {c}" for n, c in zip(names, row, strict=True))
        for truth, row in zip(names, figures["findings"]["confusion_matrix"], strict=True))]
    before, after = calibration["before"], calibration["after"]
    lines += ["", f"Calibration: negative log-likelihood {before['nll']:.3f} as shipped, {after['nll']:.3f} with "
              f"the site's second temperature {calibration['temperature_factor']:.2f}; expected calibration error "
              f"{before['ece']:.3f} -> {after['ece']:.3f}; abstention threshold refitted "
              f"{after['abstain']['abstain_below']:.3f} (shipped {calibration['abstain_below_shipped']})."]
    if distance.get("films"):
        lines += ["", f"Gate score (distance from the training films): median {distance['median']:.2f}, 90th "
                  f"percentile {distance['p90']:.2f}, threshold {distance['threshold']}; "
                  f"{distance['over_threshold']:.0%} of the site's films over it."]
    lines += ["", "## Verdict", "", *[f"- {line}" for line in report["verdict"]]]
    if report.get("site_model"):
        lines += ["", f"Site model written: {report['site_model']}"]
    return "\n".join(lines) + "\n"


COMMANDS = (drift, validate)
