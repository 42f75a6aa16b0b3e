"""How a benchmark result is shown: a rich table, a markdown table, and a PNG of latencies and throughput."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from ..model.model_file import ENGINES

__all__ = ["bench_table", "bench_markdown", "bench_plot", "header_line", "verdict_lines", "finding_lines"]



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


# The terminal view splits the columns into tables; each keeps what fits the terminal, in this order of need.
_TABLES = (
    ("batch-1 latency, ms, and headroom against the minute", ["engine", "precision", "p50 ms", "p90 ms", "p99 ms",
                                                              "vs FP32", "vs PyTorch", "60 s budget", "remote ms"]),
    ("accuracy on the labelled folder", ["engine", "precision", "accuracy", "macro-F1", "agree FP32"]),
    ("images/s at batch N, size, start and memory", ["engine", "precision", "img/s b", "size MB", "load s",
                                                     "first ms", "peak RSS MB"]),
)
_SHORT = {"precision": "prec.", "60 s budget": "x under 60 s", "peak RSS MB": "RSS MB", "agree FP32": "agree",
          "vs PyTorch": "vs torch", "size MB": "MB", "first ms": "1st ms", "p50 ms": "p50", "p90 ms": "p90",
          "p99 ms": "p99", "remote ms": "remote"}


def _fitting(columns: list[str], cells: list[dict[str, str]], width: int) -> list[str]:
    """The first columns that fit in `width` characters as a rich table draws them (a border and a space on each
    side of every cell): a narrow terminal loses whole columns at the end, never letters of a cell."""
    kept: list[str] = []
    used = 1
    for column in columns:
        need = max([len(_SHORT.get(column, column)), *(len(row.get(column, "")) for row in cells)]) + 3
        if used + need > width and len(kept) >= 2:
            break
        kept.append(column)
        used += need
    return kept


def bench_table(result: dict, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    columns = _columns(result)
    has_reference = any(r.get("speedup_vs_reference") for r in result["rows"])
    cells = []
    for raw in result["rows"]:
        row = dict(zip(columns, _cells(result, raw, len(columns)), strict=True))
        row["engine"] = _short_label(result, raw["backend"])
        for column in columns:
            if column.startswith("img/s b"):
                row[column.replace("img/s b", "b") + "/s"] = row.pop(column)
        cells.append(row)
    dropped = []
    for title, wanted in _TABLES:
        available = [c for c in _expand(wanted, result) if c in cells[0] and (c != "vs PyTorch" or has_reference)
                     and any(row.get(c) for raw, row in zip(result["rows"], cells, strict=True) if "error" not in raw)]
        if len(available) <= 2:
            continue
        shown = _fitting(available, cells, console.width)
        dropped += available[len(shown):]
        table = Table(title=f"cxr-edge bench: {title}", title_justify="left")
        for i, column in enumerate(shown):
            table.add_column(_SHORT.get(column, column), justify="left" if i < 2 else "right", no_wrap=True)
        for raw, row in zip(result["rows"], cells, strict=True):
            if "error" in raw:  # its reason is among the warnings under the tables
                table.add_row(escape(row["engine"]), row["precision"], "[red]did not run[/]")
                continue
            table.add_row(*(escape(row[c].replace("x under", "x")) for c in shown))
        console.print(table)
    if dropped:
        console.print(f"[dim]not shown at this width: {', '.join(dropped)} (see --markdown or --json)[/]")
    console.print(header_line(result), style="dim")
    for item in result.get("end_to_end", []):
        shares = ", ".join(f"{k} {v:.0%}" for k, v in item["share"].items())
        console.print(f"end to end, {_label(result, item['backend'])} {item['precision'].upper()}: "
                      f"{item['total_ms']:.2f} ms per file over {item['files']} files ({shares})")
    for line in finding_lines(result):
        console.print(line, markup=False)
    for line in verdict_lines(result):
        console.print(line)
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")


def _expand(wanted: list[str], result: dict) -> list[str]:
    out = []
    for column in wanted:
        out += [f"b{b}/s" for b in result["batches"]] if column == "img/s b" else [column]
    return out


def verdict_lines(result: dict) -> list[str]:
    """Plain sentences against the hospital's budget of one minute per image: inference alone (the slowest row's
    p99), and file to label where it was measured; what was not measured, and how to measure it."""
    budget_ms = result.get("budget_s", 60.0) * 1000
    ran = [r for r in result["rows"] if "error" not in r]
    lines = []
    if ran:
        worst = max(ran, key=lambda r: r["latency_ms"]["p99"])
        p99 = worst["latency_ms"]["p99"]
        lines.append(f"verdict: inference alone is within the one-minute budget on every row: the slowest, "
                     f"{_label(result, worst['backend'])} {worst['precision'].upper()}, takes {p99:.2f} ms at p99, "
                     f"{budget_ms / p99:,.0f} times under 60 s")
    for item in result.get("end_to_end", []):
        total = item["total_ms"]
        lines.append(f"verdict: file to label, {_label(result, item['backend'])} {item['precision'].upper()}: "
                     f"{total:.1f} ms per file, {budget_ms / total:,.0f} times under 60 s"
                     if total < budget_ms else f"verdict: file to label takes {total:.0f} ms: OVER the budget")
    if not result.get("end_to_end"):
        lines.append("file to label: not measured (add --end-to-end --data DIR)")
    if not any(r["backend"] not in ENGINES for r in result["rows"]):
        lines.append("PyTorch reference row: not measured (add --checkpoint CKPT; needs the export extra)")
    return lines


def finding_lines(result: dict) -> list[str]:
    """A multi-label model's figures per engine and finding, as a markdown table (empty for four-class models):
    AUROC, and sensitivity and specificity at the finding's operating point with 95 % intervals."""
    rows = [r for r in result["rows"] if "per_finding" in r]
    if not rows:
        return []
    lines = ["| engine | precision | finding | films with / without | AUROC | operating point | sensitivity | "
             "specificity |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for name, f in row["per_finding"].items():
            said = [f"{f[k]:.2f} ({f[k + '_interval'][0]:.2f}-{f[k + '_interval'][1]:.2f})" if f[k] is not None
                    else "-" for k in ("sensitivity", "specificity")]
            lines.append(f"| {_label(result, row['backend'])} | {row['precision'].upper()} | {name} | "
                         f"{f['with']} / {f['without']} | {f['auroc']:.3f} | {f['operating_point']:.3f} | "
                         f"{said[0]} | {said[1]} |")
    return lines


def bench_markdown(result: dict) -> str:
    columns = _columns(result)
    lines = [f"Measured: {header_line(result)}.", "", "| " + " | ".join(columns) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_cells(result, row, len(columns))) + " |" for row in result["rows"]]
    for item in result.get("end_to_end", []):
        stages = ", ".join(f"{k} {v:.2f} ms ({item['share'][k]:.0%})" for k, v in item["stage_ms_p50"].items())
        lines.append(f"\nEnd to end, {_label(result, item['backend'])} {item['precision'].upper()} over "
                     f"{item['files']} files: {item['total_ms']:.2f} ms per file: {stages}.")
    findings = finding_lines(result)
    lines += ["", *findings] if findings else []
    lines += [f"\n{line[0].upper()}{line[1:]}." for line in verdict_lines(result)]
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
