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


# Legacy: the dedup bitmap of releases before the runs (db/live.py reads it for a call that was
# live across the upgrade and has sent nothing since). Remove with CallKeys.legacy_seen.


def missing_between(present: Sequence[int], first: int, last: int, cap: int) -> list[int]:
    """The sequences in [first, last] absent from the sorted `present`, at most `cap` of them."""
    missing: list[int] = []
    expected = first
    for seq in present:
        if seq < expected:
            continue
        while expected < seq and len(missing) < cap:
            missing.append(expected)
            expected += 1
        if len(missing) >= cap:
            return missing
        expected = seq + 1
    while expected <= last and len(missing) < cap:
        missing.append(expected)
        expected += 1
    return missing


def bits_set(bitmap: bytes, first: int, last: int) -> list[int]:
    last = min(last, len(bitmap) * 8 - 1)
    present: list[int] = []
    for byte_index in range(first // 8, last // 8 + 1):
        byte = bitmap[byte_index]
        if not byte:
            continue
        base = byte_index * 8
        # Redis numbers bits from the most significant bit of each byte.
        present.extend(base + bit for bit in range(8) if byte & (0x80 >> bit))
    return [s for s in present if first <= s <= last]
