"""From what a user typed to ordered predictions: expanding paths, and overlapping decoding with inference.

Decoding a radiograph costs more than classifying it, so a thread pool decodes and preprocesses upcoming files
(OpenCV and the DICOM decoders release the GIL) while the calling thread runs inference on the current batch.
Results come back in input order, and at most a bounded window of files is in memory at once.
"""

from __future__ import annotations

import glob
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .classifier import Classifier, Prediction, Prepared
from .images import IMAGE_SUFFIXES

__all__ = ["InputError", "expand_inputs", "predict_stream"]


@dataclass(frozen=True)
class InputError:
    """A path argument that names no readable input (missing, empty folder, glob without matches)."""

    path: str
    reason: str


def _is_candidate(path: Path) -> bool:
    """Files a folder walk picks up: image suffixes, plus files without one (PACS exports often lack it)."""
    return not path.name.startswith(".") and (path.suffix.lower() in IMAGE_SUFFIXES or path.suffix == "")


def expand_inputs(specs: Sequence[str], *, recursive: bool = False) -> list[Path | InputError]:
    """Turn command-line arguments into an ordered list of files, keeping a reason for each that names none.

    Args:
        specs: files, folders and glob patterns (patterns the shell did not expand, e.g. quoted).
        recursive: descend into subfolders of folders (and let ``**`` in patterns match them).
    """
    items: list[Path | InputError] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            walker = path.rglob("*") if recursive else path.iterdir()
            found = sorted(p for p in walker if p.is_file() and _is_candidate(p))
            items += found or [InputError(spec, "folder holds no image files")]
        elif path.exists() or os.path.islink(spec):
            items.append(path)
        elif glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=recursive) if Path(m).is_file())
            items += matches or [InputError(spec, "no files match this pattern")]
        else:
            items.append(InputError(spec, "no such file or folder"))
    return items


def predict_stream(classifier: Classifier, items: Iterable[Path | InputError], *, batch_size: int = 8,
                   workers: int | None = None, cam: bool = False) -> Iterator[Prediction]:
    """Classify many inputs with decoding overlapped with inference; yields predictions in input order.

    Args:
        classifier: an opened classifier.
        items: files (or `InputError` entries, passed through as failed predictions).
        batch_size: inputs per inference call.
        workers: decoding threads (default: every core).
        cam: also return each prediction's activation map and display image.
    """
    workers = workers or os.cpu_count() or 1
    window = 2 * batch_size + workers  # bounded read-ahead: memory stays flat on any folder size
    source = iter(items)
    pending: deque[Future[Prepared]] = deque()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr-decode") as pool:

        def refill() -> None:
            while len(pending) < window:
                item = next(source, None)
                if item is None:
                    return
                pending.append(_submit(pool, classifier, item, cam))

        refill()
        while pending:
            group: list[Prepared] = []
            ready = 0
            while pending and ready < batch_size:
                prepared = pending.popleft().result()
                refill()
                group.append(prepared)
                ready += prepared.input is not None
            yield from classifier.infer(group, cam=cam)


def _submit(pool: ThreadPoolExecutor, classifier: Classifier, item: Path | InputError, cam: bool) -> Future[Prepared]:
    if isinstance(item, InputError):
        done: Future[Prepared] = Future()
        done.set_result(Prepared(item.path, error=item.reason))
        return done
    return pool.submit(classifier.prepare, item, keep_display=cam)
