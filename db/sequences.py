"""Gap arithmetic over received sequence numbers: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise


def missing_between_runs(runs: Sequence[tuple[int, int]], cap: int, upto: int) -> list[int]:
    """The sequences up to `upto` absent between the sorted, disjoint runs `(first, last)`, at
    most `cap` of them. Every pair of runs has a gap, so `cap + 1` runs are all a full answer
    needs; the last run's `last` is never read (db/lua/ingest.lua lets it lag)."""
    missing: list[int] = []
    for (_, last), (first, _) in pairwise(runs):
        room = cap - len(missing)
        if room <= 0 or last >= upto:
            break
        missing.extend(range(last + 1, min(first, upto + 1, last + 1 + room)))
    return missing
