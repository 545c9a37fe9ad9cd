"""What the worker reads of a flushed call to assemble its audio: the packets' data by sequence, a
page at a time (each page its own short transaction, so a transcription that takes minutes holds
no connection), and the figures that size the audio before it is read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

_PAGE = text(
    "SELECT sequence, data FROM packet WHERE call_id = :call_id AND sequence > :after"
    " ORDER BY sequence LIMIT :limit"
)
_FIGURES = text(
    "SELECT c.start_metadata AS metadata, p.packets, p.first, p.last, p.data_chars"
    " FROM call c, LATERAL (SELECT count(*) AS packets, min(sequence) AS first,"
    " max(sequence) AS last, coalesce(sum(length(data)), 0) AS data_chars"
    " FROM packet WHERE call_id = c.call_id) p WHERE c.call_id = :call_id"
)


@dataclass(frozen=True, slots=True)
class PacketFigures:
    metadata: dict[str, Any] | None  # what a media stream's start said (its mediaFormat)
    packets: int
    first: int | None
    last: int | None
    data_chars: int  # characters of data, all packets together (base64: 4 for 3 bytes)


class CallPackets:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], call_id: str) -> None:
        self.sessions = sessions
        self.call_id = call_id

    async def page(self, after: int, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` (sequence, data) of the call after sequence `after`, in order."""
        async with self.sessions() as session:
            result = await session.execute(
                _PAGE, {"call_id": self.call_id, "after": after, "limit": limit}
            )
            return [(int(row.sequence), str(row.data)) for row in result]

    async def figures(self) -> PacketFigures:
        async with self.sessions() as session:
            row = (await session.execute(_FIGURES, {"call_id": self.call_id})).one_or_none()
        if row is None:
            return PacketFigures(None, 0, None, None, 0)
        return PacketFigures(
            row.metadata, int(row.packets), row.first, row.last, int(row.data_chars)
        )
