"""What the benchmarks measure alike: a percentile of a sample, and the CPU time of processes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import psutil


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of the values, nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU of the processes so far; one that has exited counts nothing."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
