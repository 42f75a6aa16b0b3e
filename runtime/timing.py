"""Interleaved timing: the one way cxr-edge compares the speed of several models or engines in one process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

__all__ = ["time_interleaved"]


def time_interleaved(runners: Sequence[Callable[[object], object]], batch: object, runs: int,
                     block: int = 1) -> list[list[float]]:
    """Milliseconds of `runs` calls of each runner on `batch`, round-robin in blocks of `block` calls.

    Taking turns (A B C A B C ...) makes a slow moment of the machine hit every runner alike, so ratios between
    them hold even when absolute figures drift.
    """
    samples: list[list[float]] = [[] for _ in runners]
    while samples and len(samples[0]) < runs:
        for runner, times in zip(runners, samples, strict=True):
            for _ in range(min(block, runs - len(times))):
                start = time.perf_counter()
                runner(batch)
                times.append((time.perf_counter() - start) * 1000)
    return samples
