"""How a benchmark result is shown: a rich table, a markdown table, and a PNG of latencies and throughput."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from ..model.model_file import ENGINES

__all__ = ["bench_table", "bench_markdown", "bench_plot", "header_line"]



def _label(result: dict, backend: str) -> str:
    return result.get("labels", {}).get(backend, backend)


def _short_label(result: dict, backend: str) -> str:
    """The engine's short name from the engine table; a reference row's first word (``PyTorch``)."""
    return ENGINES[backend].short if backend in ENGINES else _label(result, backend).split()[0]


def header_line(result: dict) -> str:
    machine, versions = result["machine"], result["versions"]
    libs = ", ".join(f"{k} {v}" for k, v in versions.items())
    return (f"{machine['cpu']}, {machine['cores']} cores ({', '.join(machine['flags']) or 'no AVX2'}), "
            f"{result['threads']} threads; {libs}; batch-1 latency over {result['runs']} interleaved runs")


def _cells(result: dict, row: dict, width: int) -> list[str]:
    """One row's cells under `_columns`; a row that did not run shows its reason in the first free cell."""
    batches = result["batches"]
    if "error" in row:
        return [_label(result, row["backend"]), row["precision"].upper(), f"did not run: {row['error']}"] + \
            [""] * (width - 3)
    latency = row["latency_ms"]
    cells = [_label(result, row["backend"]), row["precision"].upper(), f"{row['size_mb']:.1f}",
             f"{row['load_s']:.2f}" if "load_s" in row else "", f"{row['first_ms']:.1f}" if "first_ms" in row else "",
             f"{latency['p50']:.2f}", f"{latency['p90']:.2f}", f"{latency['p99']:.2f}"]
    cells += [f"{row['throughput_ips'][str(b)]:,.0f}" for b in batches]
    cells.append(f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else "")
    cells.append(f"{row['speedup_vs_fp32']:.2f}x" if row.get("speedup_vs_fp32") else "")
    cells.append(f"{row['speedup_vs_reference']:.1f}x" if row.get("speedup_vs_reference") else "")
    if _has_remote(result):  # what sending the image to a server adds, over the same model run here
        cells.append(f"+{row['remote_overhead_ms']:.2f}" if "remote_overhead_ms" in row else "")
    cells.append(f"{row['budget_ratio']:,.0f}x under")  # the headroom: how often p50 fits into 60 s
    if "accuracy" in row:
        agreement = row.get("agreement_fp32")
        cells += [f"{row['accuracy']:.3f}", f"{row['macro_f1']:.3f}",
                  f"{agreement:.1%}" if agreement is not None else ""]
    return cells + [""] * (width - len(cells))


def _has_remote(result: dict) -> bool:
    """A row ran on a server: its network and serialisation cost gets a column."""
    return any("remote_overhead_ms" in r for r in result["rows"])


def _columns(result: dict) -> list[str]:
    columns = ["engine", "precision", "size MB", "load s", "first ms", "p50 ms", "p90 ms", "p99 ms"]
    columns += [f"img/s b{b}" for b in result["batches"]]
    columns += ["peak RSS MB", "vs FP32", "vs PyTorch"] + (["remote ms"] if _has_remote(result) else []) + \
        ["60 s budget"]
    if any("accuracy" in r for r in result["rows"]):
        columns += ["accuracy", "macro-F1", "agree FP32"]
    return columns


# The terminal view splits the columns in two tables that each fit an 80-column terminal.
_SPEED = ["engine", "precision", "p50 ms", "p90 ms", "p99 ms", "vs FP32", "vs PyTorch", "remote ms", "60 s budget",
          "accuracy", "macro-F1", "agree FP32"]
_RESOURCES = ["engine", "precision", "img/s b", "size MB", "load s", "first ms", "peak RSS MB"]


_SHORT = {"precision": "prec.", "60 s budget": "x under 60 s",
          "peak RSS MB": "RSS MB", "agree FP32": "agree", "vs PyTorch": "vs torch", "size MB": "MB",
          "first ms": "1st ms"}


def bench_table(result: dict, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    columns = _columns(result)
    has_reference = any(r.get("speedup_vs_reference") for r in result["rows"])
    cells = [dict(zip(columns, _cells(result, row, len(columns)), strict=True)) for row in result["rows"]]
    for title, wanted in (("batch-1 latency and headroom", _SPEED),
                          ("images/s at batch N (bN/s), size, start and memory", _RESOURCES)):
        shown = [c for c in columns if (c in wanted or (c.startswith("img/s b") and "img/s b" in wanted))
                 and (c != "vs PyTorch" or has_reference)]
        table = Table(title=f"cxr-edge bench: {title}", title_justify="left")
        for i, column in enumerate(shown):
            header = column.replace("img/s b", "b") + "/s" if column.startswith("img/s b") else column
            table.add_column(_SHORT.get(header, header), justify="left" if i < 2 else "right", no_wrap=True)
        for raw, row in zip(result["rows"], cells, strict=True):
            engine = escape(_short_label(result, raw["backend"]))
            if "error" in raw:  # its reason is among the warnings under the tables
                table.add_row(engine, row["precision"], "[red]did not run[/]")
                continue
            table.add_row(engine, *(row[c].replace("x under", "x") for c in shown[1:]))
        console.print(table)
    console.print(header_line(result), style="dim")
    for item in result.get("end_to_end", []):
        shares = ", ".join(f"{k} {v:.0%}" for k, v in item["share"].items())
        console.print(f"end to end, {_label(result, item['backend'])} {item['precision'].upper()}: "
                      f"{item['total_ms']:.2f} ms per file over {item['files']} files ({shares})")
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")


def bench_markdown(result: dict) -> str:
    columns = _columns(result)
    lines = [f"Measured: {header_line(result)}.", "", "| " + " | ".join(columns) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_cells(result, row, len(columns))) + " |" for row in result["rows"]]
    for item in result.get("end_to_end", []):
        stages = ", ".join(f"{k} {v:.2f} ms ({item['share'][k]:.0%})" for k, v in item["stage_ms_p50"].items())
        lines.append(f"\nEnd to end, {_label(result, item['backend'])} {item['precision'].upper()} over "
                     f"{item['files']} files: {item['total_ms']:.2f} ms per file: {stages}.")
    lines += [f"\nWarning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines) + "\n"


def bench_plot(result: dict, path: str | Path) -> None:
    """Latency distributions (box plot) and throughput per batch size, one colour per row."""
    import matplotlib  # the caller checked for it (`cxr_edge.runtime.extras.require`) before the benchmark ran

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "error" not in r]
    labels = [f"{_label(result, r['backend'])}\n{r['precision'].upper()}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    left.boxplot([r["raw_latency_ms"] for r in rows], showfliers=True)
    left.set_xticks(range(1, len(labels) + 1), labels)
    left.set(ylabel="ms per image (batch 1)", title="Latency distribution")
    left.grid(alpha=0.3, axis="y")
    batches = result["batches"]
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        values = [row["throughput_ips"][str(b)] for b in batches]
        right.bar([j + i * width for j in range(len(batches))], values, width, label=labels[i].replace("\n", " "))
    right.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(batches))],
                     [f"batch {b}" for b in batches])
    right.set(ylabel="images per second", title="Throughput")
    right.legend()
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(textwrap.fill(header_line(result), 150), fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
