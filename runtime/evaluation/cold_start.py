"""Cold start of one model on one engine, measured in a fresh process
(``python -m cxr_edge.runtime.evaluation.cold_start``).

`cxr-edge bench` runs this once per row, so that the caches and memory of the other rows (which the bench holds
open) neither flatter nor burden this one. Prints one JSON object: load time, first inference, peak memory.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the imports: they are part of a cold start

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402

import numpy as np  # noqa: E402

from ..model.classifier import Classifier  # noqa: E402

__all__ = ["measure", "peak_rss_mb"]


def peak_rss_mb() -> float:
    """This process's own peak resident memory.

    VmHWM belongs to this program's address space; ru_maxrss would also count the parent's pages that were shared
    between fork and exec.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model: str, backend: str, threads: int) -> dict[str, float]:
    """Open `model` on `backend`, run one inference, and report the times since this process started."""
    classifier = Classifier.open(model, backend=backend, threads=threads)
    loaded = time.perf_counter()
    contract = classifier.contract
    classifier.run(np.zeros((1, contract.channels, *contract.input_size), np.float32))
    first = time.perf_counter()
    return {"load_s": loaded - _STARTED, "first_ms": (first - loaded) * 1000, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("backend")
    parser.add_argument("threads", type=int)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.backend, args.threads)))


if __name__ == "__main__":
    main()
