"""A call's audio at rest: its segments, one row per track, written once each.

A segment is the entries of the call's stream after the latest stored segment's last entry, in
stream order. `store_segment` takes a per-call advisory lock, reads where the latest segment
ended and stores only what comes after it, so two flushers racing (a segment job and the call's
final flush, or a re-run after a worker died between a commit and its trim) never store a packet
twice, and a flusher that read a stale page stores only what is new in it. The stream's ids
grow with time (Redis gives each entry max(now in ms, the last id)), so "after the last one
stored" is exactly "not stored yet".

Reads: the heads (everything but the bytes: small, a few arrays per 30 s of audio) and one row's
bytes at a time, each in its own short transaction, so a long recording holds no connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from db.object_store import NoObjectStore, ObjectStore
from db.packets import StoredPacket

TEXT = "text"  # the encoding of a row whose payload is the packets' data as sent (UTF-8)


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One track of a segment, ready to store: built by core/recording.py."""

    track: int
    encoding: str  # an audio format (core/audio.py's str(AudioFormat)) or TEXT
    sequences: list[int]  # ascending
    sizes: list[int]  # each packet's bytes in payload
    timestamps: list[float]
    arrivals: list[float]
    payload: bytes


@dataclass(frozen=True, slots=True)
class Stored:
    """What store_segment did: the segment it wrote (None: nothing was new), the stream id
    PostgreSQL holds the call up to, and the rows written."""

    segment: int | None
    through: tuple[int, int]
    rows: Sequence[SegmentRow] = ()


@dataclass(frozen=True, slots=True)
class SegmentHead:
    """A stored row without its bytes."""

    segment: int
    track: int
    encoding: str
    sequences: list[int]
    sizes: list[int]
    timestamps: list[float]


_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:call_id, 16))")
_LATEST = text(
    "SELECT segment, last_entry_ms, last_entry_n FROM call_segment WHERE call_id = :call_id"
    " ORDER BY segment DESC LIMIT 1"
)
_INSERT = text(
    """
    INSERT INTO call_segment (call_id, segment, track, last_entry_ms, last_entry_n, encoding,
        packets, first_sequence, last_sequence, sequences, sizes, timestamps, arrivals, payload,
        object_key)
    VALUES (:call_id, :segment, :track, :last_ms, :last_n, :encoding, :packets, :first, :last,
        :sequences, :sizes, :timestamps, :arrivals, :payload, :object_key)
    """
)
_HEADS = text(
    "SELECT segment, track, encoding, sequences, sizes, timestamps FROM call_segment"
    " WHERE call_id = :call_id ORDER BY segment, track"
)
_PAYLOAD = text(
    "SELECT payload, object_key FROM call_segment WHERE call_id = :call_id"
    " AND segment = :segment AND track = :track"
)
_VERSION = text(
    "SELECT count(*) AS rows, coalesce(max(segment), -1) AS latest,"
    " coalesce(sum(packets), 0) AS packets FROM call_segment WHERE call_id = :call_id"
)

Build = Callable[[list[StoredPacket]], list[SegmentRow]]


async def store_segment(
    conn: AsyncConnection,
    call_id: str,
    packets: Sequence[StoredPacket],
    build: Build,
    objects: ObjectStore | None = None,
) -> Stored:
    """Store, as the call's next segment, those of `packets` (in stream order) that come after
    the latest stored segment. Runs in the caller's transaction, which it locks for the call.
    With `objects` (AUDIO_STORE_URL), each row's bytes go to an object first, and the row
    names it."""
    await conn.execute(_LOCK, {"call_id": call_id})
    latest = (await conn.execute(_LATEST, {"call_id": call_id})).one_or_none()
    through = (int(latest.last_entry_ms), int(latest.last_entry_n)) if latest else (-1, -1)
    new = [p for p in packets if p.entry > through]
    if not new:
        return Stored(None, through)
    segment = int(latest.segment) + 1 if latest else 0
    last = new[-1].entry
    rows = build(new)
    keys: dict[int, str | None] = {row.track: None for row in rows}
    if objects is not None:
        for row in rows:
            keys[row.track] = objects.key(call_id, segment, row.track, last)
            await objects.put(keys[row.track] or "", row.payload)
    params = [
        {
            "call_id": call_id,
            "segment": segment,
            "track": row.track,
            "last_ms": last[0],
            "last_n": last[1],
            "encoding": row.encoding,
            "packets": len(row.sequences),
            "first": row.sequences[0],
            "last": row.sequences[-1],
            "sequences": row.sequences,
            "sizes": row.sizes,
            "timestamps": row.timestamps,
            "arrivals": row.arrivals,
            "payload": b"" if keys[row.track] else row.payload,
            "object_key": keys[row.track],
        }
        for row in rows
    ]
    await conn.execute(_INSERT, params)
    return Stored(segment, last, rows)


class SegmentReader:
    """One call's stored segments, read in short transactions of their own."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        call_id: str,
        objects: ObjectStore | None = None,
    ) -> None:
        """`objects`: where rows that name an object keep their bytes (AUDIO_STORE_URL); rows
        written before it was set keep theirs in PostgreSQL, and are read from there."""
        self.sessions = sessions
        self.call_id = call_id
        self.objects = objects

    async def heads(self) -> list[SegmentHead]:
        async with self.sessions() as session:
            result = await session.execute(_HEADS, {"call_id": self.call_id})
            return [
                SegmentHead(
                    int(r.segment),
                    int(r.track),
                    str(r.encoding),
                    list(r.sequences),
                    list(r.sizes),
                    list(r.timestamps),
                )
                for r in result
            ]

    async def payload(self, segment: int, track: int) -> bytes:
        params = {"call_id": self.call_id, "segment": segment, "track": track}
        async with self.sessions() as session:
            row = (await session.execute(_PAYLOAD, params)).one_or_none()
        if row is None:
            return b""
        if row.object_key is None:
            return bytes(row.payload)
        if self.objects is None:
            raise NoObjectStore(
                f"call {self.call_id}'s audio is in an object store, and AUDIO_STORE_URL is unset"
            )
        return await self.objects.get(str(row.object_key))

    async def version(self) -> tuple[int, int, int]:
        """(rows, latest segment, packets): changes whenever a segment is stored."""
        async with self.sessions() as session:
            row = (await session.execute(_VERSION, {"call_id": self.call_id})).one()
        return int(row.rows), int(row.latest), int(row.packets)
