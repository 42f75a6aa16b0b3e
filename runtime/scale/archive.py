"""Scoring an archive on Ray: every image once, resumably, on this machine or an existing Ray cluster.

Ray Data fans the images out to an actor pool (`ActorPoolStrategy`), each actor holding one `Classifier`; the
driver streams the results back and writes them as they come, one Parquet part per batch (temporary name, fsync,
rename), so that a killed job loses at most the batches in flight. Each row is the `predict` record of one
image plus its SHA-256, size, modification time and the model's SHA-256. A later run over the same source with
the same model skips every file whose path, size and time stamp already have a row, and any file whose content
(SHA-256) already has one, so nothing is scored twice. A file that cannot be read is a row with its error, never
a failed job.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CxrEdgeError, os_reason
from ..files import private_dir, remove_stale_temps, warn_if_open, write_atomic
from ..model.model_file import file_sha256, resolve_model
from ..reading.paths import InputError, expand_inputs
from . import dicomweb

__all__ = ["ArchiveSummary", "score_archive", "archive_inputs", "read_results", "PARTS_DIR", "ADDRESSES"]

log = logging.getLogger(__name__)

PARTS_DIR = "parts"
"""Under the output folder: one Parquet file per written batch; together they are the result table."""

ADDRESSES = ("local", "auto")
"""``local`` starts a Ray instance for this job; ``auto`` joins the cluster this machine belongs to (or give a
cluster's address, ``ray://host:10001``)."""


@dataclass
class ArchiveSummary:
    """What a run did."""

    inputs: int = 0
    skipped: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    ray_start_s: float = 0.0

    @property
    def scored(self) -> int:
        return sum(self.statuses.values())

    def line(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items()))
        rate = f"{self.scored / self.seconds:,.1f} images/s" if self.seconds > 0 and self.scored else "nothing scored"
        return (f"{self.inputs} inputs: {self.skipped} already scored, {self.scored} scored ({counts or 'none'}) in "
                f"{self.seconds:.1f} s, {rate}; Ray started in {self.ray_start_s:.1f} s")


def archive_inputs(source: str | Path, *, modalities: Sequence[str] = ("CR", "DX"),
                   study_date: str | None = None) -> list[tuple[str, str | None]]:
    """(path, error) of every image under a folder (recursively), of every path a CSV/TSV manifest lists (a column
    named ``path``, else the first; relative paths are relative to the manifest), or the WADO-RS address of every
    instance a DICOMweb PACS finds (``dicomweb+https://host/dicom-web``, `modalities`, `study_date`)."""
    if dicomweb.is_dicomweb(str(source)):
        return [(url, None) for url in dicomweb.query_instances(str(source), modalities=modalities,
                                                                 study_date=study_date)]
    source = Path(source)
    if not source.exists():
        raise CxrEdgeError(f"{source}: no such folder or manifest")
    if source.is_dir():
        items = expand_inputs([str(source)], recursive=True)
    elif source.suffix.lower() in (".csv", ".tsv", ".txt"):
        items = expand_manifest(source)
    else:
        raise CxrEdgeError(f"{source}: not a folder or a CSV/TSV manifest")
    return [(item.path, item.reason) if isinstance(item, InputError) else (str(item), None) for item in items]


def expand_manifest(manifest: Path) -> list[Path | InputError]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CxrEdgeError(f"{manifest}: {os_reason(exc, manifest)}") from exc
    dialect = csv.excel_tab if manifest.suffix.lower() == ".tsv" or "\t" in text.split("\n", 1)[0] else csv.excel
    rows = list(csv.reader(text.splitlines(), dialect))
    if not rows:
        raise CxrEdgeError(f"{manifest}: the manifest is empty")
    header = [h.strip().lower() for h in rows[0]]
    column = header.index("path") if "path" in header else 0
    body = rows[1:] if "path" in header else rows
    items: list[Path | InputError] = []
    for row in body:
        if len(row) <= column or not row[column].strip():
            continue
        path = Path(row[column].strip())
        items.append(path if path.is_absolute() else manifest.parent / path)
    return items


def read_results(out: str | Path) -> Any:
    """Every row written so far, as one pyarrow Table (empty when there is none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted((Path(out) / PARTS_DIR).glob("part-*.parquet"))  # whole parts only, never one being written
    tables = [pq.read_table(p) for p in parts]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def score_archive(source: str | Path, out: str | Path, *, model: str | Path | None = None, backend: str = "auto",
                  workers: int = 2, batch_size: int = 16, address: str = "local", jsonl: bool = False,
                  gate: str = "reject", on_progress: Callable[[int, int], None] | None = None,
                  modalities: Sequence[str] = ("CR", "DX"), study_date: str | None = None) -> ArchiveSummary:
    """Score every image of `source` not already scored by this model into `out`.

    Args:
        source: a folder tree, a CSV/TSV manifest of paths, or a DICOMweb service (``dicomweb+https://...``,
            queried for `modalities` and `study_date`).
        out: the results folder (``parts/*.parquet``; ``results.jsonl`` too with `jsonl`).
        model: model file (default: the shipped INT8 model).
        backend: engine inside each actor.
        workers: actors (each one classifier, one inference thread).
        batch_size: images per actor call and per written part.
        address: ``local``, ``auto`` or a Ray cluster address.
        on_progress: called with (rows written, rows to write) after each batch.
    """
    started = time.perf_counter()
    model_path = resolve_model(model)
    model_id = file_sha256(model_path)
    out = Path(out)
    warn_if_open(out)
    private_dir(out / PARTS_DIR)
    remove_stale_temps(out / PARTS_DIR)  # parts a killed run was writing
    summary = ArchiveSummary()
    inputs = archive_inputs(source, modalities=modalities, study_date=study_date)
    summary.inputs = len(inputs)
    done_files, done_contents = _already_scored(out, model_id)
    todo = []
    for path, error in inputs:
        stamp = _stamp(path) if error is None else None
        if stamp is not None and (path, *stamp) in done_files:
            summary.skipped += 1
            continue
        todo.append({"path": path, "size": stamp[0] if stamp else -1, "mtime_ns": stamp[1] if stamp else -1,
                     "input_error": error or ""})
    if not todo:
        summary.seconds = time.perf_counter() - started
        return summary
    ray_started = time.perf_counter()
    ray = _start_ray(address, workers)
    summary.ray_start_s = time.perf_counter() - ray_started
    try:
        rows_written = 0
        for table in _scored_batches(todo, model_path, backend, workers, batch_size, gate, model_id):
            kept = _drop_known_contents(table, done_contents)
            if kept.num_rows:
                _write_part(out / PARTS_DIR, kept)
                if jsonl:
                    _append_jsonl(out / "results.jsonl", kept)
            for status in kept.column("status").to_pylist():
                summary.statuses[status] = summary.statuses.get(status, 0) + 1
            summary.skipped += table.num_rows - kept.num_rows
            rows_written += table.num_rows
            if on_progress is not None:
                on_progress(rows_written, len(todo))
    finally:
        if address == "local":
            ray.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary


# --- resuming ----------------------------------------------------------------------------------------------


def _stamp(path: str) -> tuple[int, int] | None:
    if path.startswith(("http://", "https://")):  # a WADO-RS address names its instance for good
        return (0, 0)
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _already_scored(out: Path, model_id: str) -> tuple[set[tuple[str, int, int]], set[str]]:
    """(path, size, mtime) and content hashes that already have a row for this model."""
    table = read_results(out)
    if not table.num_rows:
        return set(), set()
    rows = table.select(["path", "size", "mtime_ns", "sha256", "model_sha256"]).to_pylist()
    mine = [r for r in rows if r["model_sha256"] == model_id]
    return {(r["path"], r["size"], r["mtime_ns"]) for r in mine}, {r["sha256"] for r in mine if r["sha256"]}


def _drop_known_contents(table: Any, done_contents: set[str]) -> Any:
    """Rows whose image content was already scored (by an earlier run, or earlier in this one) are dropped; the
    first of several identical files within one batch is kept."""
    import pyarrow as pa

    keep = []
    for sha in table.column("sha256").to_pylist():
        fresh = not sha or sha not in done_contents
        keep.append(fresh)
        if sha:
            done_contents.add(sha)
    return table.filter(pa.array(keep))


def _write_part(folder: Path, table: Any) -> None:
    """One Parquet part, whole or not at all (`write_atomic`: a temporary name, synced, then linked in)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
    write_atomic(folder / name, buffer.getvalue().to_pybytes())


def _append_jsonl(path: Path, table: Any) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        for row in table.to_pylist():
            handle.write(json.dumps(row, allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# --- Ray ---------------------------------------------------------------------------------------------------


def _start_ray(address: str, workers: int) -> Any:
    from ..extras import require

    require("ray", "pyarrow", purpose="score-archive (pip install 'cxr-edge[scale]')")
    import ray

    options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                               "include_dashboard": False, "configure_logging": True}
    if address == "local":
        ray.init(address="local", num_cpus=max(workers, os.cpu_count() or 1), **options)
    else:
        ray.init(address=address, **options)
    import ray.data  # configures Ray Data's loggers: quieten them after, not before
    from ray.data import DataContext

    for name in ("ray", "ray.data"):  # Ray's own progress lines; cxr-edge draws its own progress
        logging.getLogger(name).setLevel(logging.ERROR)

    context = DataContext.get_current()
    context.enable_progress_bars = False  # cxr-edge draws its own
    context.print_on_execution_start = False
    return ray


class _Scorer:
    """One Ray actor: one classifier, one inference thread; a batch of paths in, a batch of result rows out."""

    def __init__(self, model: str, backend: str, gate: str, model_id: str) -> None:
        from ..model.classifier import Classifier

        self.classifier = Classifier.open(model, backend=backend, threads=1, mode="throughput", gate=gate)
        self.model_name = Path(model).name
        self.model_id = model_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from ..model.classifier import Prepared
        from ..outputs.steps import Outcome, OutputSteps, RowStep

        prepared, digests = [], []
        for path, error in zip(batch["path"], batch["input_error"], strict=True):
            path = str(path)
            if error:
                prepared.append(Prepared(path, error=str(error)))
                digests.append("")
                continue
            try:
                item, digest = self._fetch(path)
            except OSError as exc:
                prepared.append(Prepared(path, error=os_reason(exc, path)))
                digests.append("")
                continue
            digests.append(digest)
            prepared.append(self.classifier.prepare(item, name=path))
            if item != path:
                Path(item).unlink(missing_ok=True)
        rows: list[dict[str, Any]] = []
        outputs = OutputSteps([RowStep(rows, self.classifier.contract.class_names)])
        for i, prediction in enumerate(self.classifier.infer(prepared)):
            record = prediction.to_record() | {
                "size": int(batch["size"][i]), "mtime_ns": int(batch["mtime_ns"][i]), "sha256": digests[i],
                "model": self.model_name, "model_sha256": self.model_id}
            outputs.deliver(Outcome(prediction, record, Path(prediction.path).name, None, self.classifier.contract))
        return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


    @staticmethod
    def _fetch(path: str) -> tuple[str, str]:
        """The file to read and its SHA-256; a WADO-RS address is fetched into a private temporary file."""
        if not path.startswith(("http://", "https://")):
            return path, file_sha256(path)
        import hashlib
        import tempfile

        data = dicomweb.fetch_instance(path)
        with tempfile.NamedTemporaryFile(suffix=".dcm", delete=False) as handle:
            handle.write(data)
        return handle.name, hashlib.sha256(data).hexdigest()


def _scored_batches(todo: Sequence[dict[str, Any]], model: Path, backend: str, workers: int, batch_size: int,
                    gate: str, model_id: str) -> Iterator[Any]:
    """The result rows as pyarrow tables, one per actor batch, as Ray finishes them."""
    import ray.data
    from ray.data import ActorPoolStrategy

    blocks = max(1, len(todo) // batch_size)
    dataset = ray.data.from_items(list(todo), override_num_blocks=blocks)
    scored = dataset.map_batches(
        _Scorer, fn_constructor_kwargs={"model": str(model), "backend": backend, "gate": gate, "model_id": model_id},
        batch_size=batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=min(workers, blocks)), num_cpus=1)
    yield from scored.iter_batches(batch_size=None, batch_format="pyarrow")
