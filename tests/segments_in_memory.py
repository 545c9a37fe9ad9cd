"""Segments held in memory, as db/segments.py's SegmentReader serves stored ones: for a recording
that never was in PostgreSQL (the codec's and the providers' tests). A test helper: nothing at run
time holds a call's segments in memory."""

from __future__ import annotations

from collections.abc import Sequence

from core.audio import AudioFormat
from core.recording import build_rows
from db.packets import StoredPacket
from db.segments import SegmentHead, SegmentRow, head_of


class SegmentsInMemory:
    """Each segment a list of rows, as the worker builds them."""

    def __init__(self, rows: Sequence[Sequence[SegmentRow]]) -> None:
        self.rows = {(n, row.track): row for n, seg in enumerate(rows) for row in seg}

    @classmethod
    def of_packets(
        cls, segments: Sequence[Sequence[StoredPacket]], fmt: AudioFormat | None, said: bool
    ) -> SegmentsInMemory:
        """Each list of packets a segment, built as the worker builds them."""
        return cls([build_rows(packets, fmt, said) for packets in segments])

    async def heads(self) -> list[SegmentHead]:
        return [head_of(n, track, r.encoding, r) for (n, track), r in sorted(self.rows.items())]

    async def payload(self, segment: int, track: int) -> bytes:
        row = self.rows.get((segment, track))
        return row.payload if row is not None else b""

    async def payload_slice(self, segment: int, track: int, start: int, length: int) -> bytes:
        return (await self.payload(segment, track))[start : start + length]
