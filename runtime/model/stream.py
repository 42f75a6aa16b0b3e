"""Classifying many inputs: decoding overlapped with inference, results in input order.

Decoding a radiograph costs more than classifying it, so a thread pool decodes and preprocesses upcoming files
(OpenCV and the DICOM decoders release the GIL) while the calling thread runs inference on the current batch.
Results come back in input order, and at most a bounded window of files is in memory at once.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..reading.paths import InputError
from .classifier import Classifier, Prediction, Prepared

__all__ = ["predict_stream"]


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
