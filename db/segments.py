"""A call's audio at rest: its segments, one row per track, written once each.

A segment is the entries of the call's stream after the latest stored segment's last entry, in
stream order. `plan_segment` reads where the latest segment ended and builds the rows of what
comes after it; `store_segment` inserts them under a per-call advisory lock. Without an object
store both run in one transaction, the lock taken first. With one (AUDIO_STORE_URL), the plan is
read without the lock and its bytes go to the store (`put_objects`) with no transaction open, so
that a slow store holds neither a connection nor the call's lock; `store_segment` then takes the
lock and inserts the rows only if the latest segment still ends where the plan read it, else
says to plan again. So two flushers
racing (a segment job and the call's final flush, or a re-run after a worker died between a
commit and its trim) never store a packet twice, and a flusher that read a stale page stores only
what is new in it. The stream's ids grow with time (Redis gives each entry max(now in ms, the
last id)), so "after the last one stored" is exactly "not stored yet".

Reads: the heads (everything but the bytes, compacted as they are read into runs of consecutive
packets: a few numbers per row of continuous audio, whatever its packet count) and slices of a
row's bytes (`substring` of the payload, which is stored EXTERNAL so that PostgreSQL reads only the
chunks a slice covers; a ranged GET of an object), each in its own short transaction, so a long
recording holds no connection and a read holds no whole row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
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
class PayloadEdit:
    """Bytes of a stored row overwritten in place, the same length (audio redaction's silence:
    core/audio_redaction.py)."""

    segment: int
    track: int
    start: int  # the first byte of the row's payload overwritten
    data: bytes


Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
HEAD_ROWS = 4  # rows whose per-packet arrays a heads read holds at once


@dataclass(frozen=True, slots=True, eq=False)
class Runs:
    """A row's packets as runs of consecutive sequences (one array entry a run): all a reader
    needs to place them, in a few numbers a run instead of four a packet. A text row's runs also
    break where a packet's size changes, so each of its packets is found by arithmetic."""

    first: Ints  # the run's first sequence
    count: Ints  # its packets
    at: Ints  # its first byte in the row's payload
    size: Ints  # its bytes
    last_size: Ints  # its last packet's bytes (in a text row: each of its packets')
    first_timestamp: Floats  # its first and last packets' timestamps (the sender's clock)
    last_timestamp: Floats
    first_arrival: Floats  # its first and last packets' arrivals (the API's clock)
    last_arrival: Floats

    @property
    def packets(self) -> int:
        return int(self.count.sum())


def runs_of(
    sequences: Sequence[int] | Ints,
    sizes: Sequence[int] | Ints,
    timestamps: Sequence[float] | Floats,
    arrivals: Sequence[float] | Floats,
    by_size: bool,
) -> Runs:
    """The runs of one row's packets (sequences ascending, as stored). `by_size`: break a run
    where a packet's size changes too (a text row)."""
    seq = np.asarray(sequences, dtype=np.int64)
    size = np.asarray(sizes, dtype=np.int64)
    stamp = np.asarray(timestamps, dtype=np.float64)
    arrival = np.asarray(arrivals, dtype=np.float64)
    if not len(seq):
        empty = np.zeros(0, dtype=np.int64)
        return Runs(empty, empty, empty, empty, empty, *(np.zeros(0) for _ in range(4)))
    breaks = np.ones(len(seq), dtype=bool)
    breaks[1:] = np.diff(seq) != 1
    if by_size:
        breaks[1:] |= np.diff(size) != 0
    first = np.flatnonzero(breaks)
    last = np.append(first[1:], len(seq)) - 1
    at = np.concatenate(([0], np.cumsum(size[:-1], dtype=np.int64)))
    return Runs(
        first=seq[first],
        count=(last - first + 1).astype(np.int64),
        at=at[first],
        size=np.add.reduceat(size, first).astype(np.int64),
        last_size=size[last],
        first_timestamp=stamp[first],
        last_timestamp=stamp[last],
        first_arrival=arrival[first],
        last_arrival=arrival[last],
    )


@dataclass(frozen=True, slots=True, eq=False)
class SegmentHead:
    """A stored row without its bytes: its packets as runs."""

    segment: int
    track: int
    encoding: str
    runs: Runs

    @property
    def packets(self) -> int:
        return self.runs.packets


def head_of(segment: int, track: int, encoding: str, row: Any) -> SegmentHead:
    """A head from a row's arrays (a stored row, or a SegmentRow)."""
    runs = runs_of(row.sequences, row.sizes, row.timestamps, row.arrivals, encoding == TEXT)
    return SegmentHead(segment, track, encoding, runs)


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


def _packed(column: str, send: str) -> str:
    """An array column as one bytea of its elements in binary (big-endian): a few bytes an
    element in one object, where asyncpg's list would be a Python object an element."""
    return (
        f"(SELECT string_agg({send}(x), '' ORDER BY o) FROM unnest({column})"
        f" WITH ORDINALITY AS u(x, o)) AS {column}"
    )


_HEADS = text(
    "SELECT segment, track, encoding, "
    + ", ".join(
        _packed(column, send)
        for column, send in [
            ("sequences", "int8send"),
            ("sizes", "int4send"),
            ("timestamps", "float8send"),
            ("arrivals", "float8send"),
        ]
    )
    + " FROM call_segment WHERE call_id = :call_id AND (segment, track) > (:segment, :track)"
    " ORDER BY segment, track LIMIT :limit"
)
_PAYLOAD = text(
    "SELECT payload, object_key FROM call_segment WHERE call_id = :call_id"
    " AND segment = :segment AND track = :track"
)
# substring() of an EXTERNAL bytea reads only the TOAST chunks it covers.
_SLICE = text(
    "SELECT CASE WHEN object_key IS NULL THEN substring(payload FROM :start FOR :length) END"
    " AS payload, object_key FROM call_segment WHERE call_id = :call_id"
    " AND segment = :segment AND track = :track"
)
_VERSION = text(
    "SELECT count(*) AS rows, coalesce(max(segment), -1) AS latest,"
    " coalesce(sum(packets), 0) AS packets FROM call_segment WHERE call_id = :call_id"
)

_HIGHEST = text(
    "SELECT track, max(last_sequence) AS highest FROM call_segment WHERE call_id = :call_id"
    " GROUP BY track"
)


async def highest_sequences(
    conn: AsyncConnection, call_id: str, lock: bool = True
) -> dict[int, int]:
    """Each track's highest sequence stored, under the call's flush lock (store_segment takes
    it again, in the same transaction: what it stores next comes after exactly these). Without
    `lock`, a plain read for a plan that store_segment checks again under the lock (a segment
    stored meanwhile makes the flusher plan again, reading these anew)."""
    if lock:
        await conn.execute(_LOCK, {"call_id": call_id})
    return {
        int(r.track): int(r.highest) for r in await conn.execute(_HIGHEST, {"call_id": call_id})
    }


_KEYS = text(
    "SELECT segment, track, object_key FROM call_segment WHERE call_id = :call_id"
    " AND (segment, track) IN"
    " (SELECT * FROM unnest(CAST(:segments AS int[]), CAST(:tracks AS int[])))"
)
# overlay() on an EXTERNAL bytea: PostgreSQL writes the row's value anew (its old version goes
# with VACUUM, as any UPDATE's); the same length in and out.
_OVERLAY = text(
    "UPDATE call_segment SET payload = overlay(payload PLACING CAST(:data AS bytea)"
    " FROM CAST(:start AS int) FOR CAST(:length AS int))"
    " WHERE call_id = :call_id AND segment = :segment AND track = :track"
    " AND object_key IS NULL AND length(payload) >= CAST(:start AS int) + :length - 1"
)


def _store_of(objects: ObjectStore | None, call_id: str) -> ObjectStore:
    """The store a row that names an object keeps its bytes in, or why there is none."""
    if objects is None:
        raise NoObjectStore(
            f"call {call_id}'s audio is in an object store, and AUDIO_STORE_URL is unset"
        )
    return objects


async def overwrite(
    conn: AsyncConnection,
    call_id: str,
    edits: Sequence[PayloadEdit],
    objects: ObjectStore | None = None,
) -> int:
    """Overwrite stored bytes in place (redaction: audio silenced, text masked), in the caller's
    transaction: rows in PostgreSQL by overlay(), rows in the object store by writing their
    object anew (before the caller commits, so a crash leaves the audio silenced and the window
    to do again, never the window stored and the audio not). Idempotent: the same edits write
    the same bytes. Returns the rows changed."""
    if not edits:
        return 0
    rows = sorted({(e.segment, e.track) for e in edits})
    params = {"call_id": call_id, "segments": [r[0] for r in rows], "tracks": [r[1] for r in rows]}
    keys = {(int(r.segment), int(r.track)): r.object_key for r in await conn.execute(_KEYS, params)}
    in_pg = [e for e in edits if keys.get((e.segment, e.track)) is None]
    if in_pg:
        await conn.execute(
            _OVERLAY,
            [
                {"call_id": call_id, "segment": e.segment, "track": e.track,
                 "data": e.data, "start": e.start + 1, "length": len(e.data)}
                for e in in_pg
            ],
        )  # fmt: skip
    for row, key in keys.items():
        if key is None:
            continue
        store = _store_of(objects, call_id)
        data = bytearray(await store.get(str(key)))
        for e in edits:
            if (e.segment, e.track) == row:
                data[e.start : e.start + len(e.data)] = e.data[: max(len(data) - e.start, 0)]
        await store.put(str(key), bytes(data))
    return len(rows)


Build = Callable[[list[StoredPacket]], list[SegmentRow]]


@dataclass(frozen=True, slots=True)
class Planned:
    """The call's next segment: the rows of what came after `after` (the latest stored
    segment's last entry when it was read; (-1, -1): none), and the object keys their bytes
    went to (none without an object store). `segment` None: nothing was new. `locked`: read
    under the call's lock, in the transaction that stores it (so it cannot have gone stale)."""

    segment: int | None
    after: tuple[int, int]
    through: tuple[int, int]
    rows: Sequence[SegmentRow] = ()
    keys: dict[int, str] = field(default_factory=dict)
    locked: bool = False


async def _through(conn: AsyncConnection, call_id: str) -> tuple[int | None, tuple[int, int]]:
    """The latest stored segment and its last stream entry ((None, (-1, -1)): none yet)."""
    latest = (await conn.execute(_LATEST, {"call_id": call_id})).one_or_none()
    if latest is None:
        return None, (-1, -1)
    return int(latest.segment), (int(latest.last_entry_ms), int(latest.last_entry_n))


async def plan_segment(
    conn: AsyncConnection,
    call_id: str,
    packets: Sequence[StoredPacket],
    build: Build,
    *,
    lock: bool = False,
) -> Planned:
    """The call's next segment: those of `packets` (in stream order) that come after the latest
    stored segment, built into rows. `lock`: take the call's lock first, in the caller's
    transaction, which is to store the plan (nothing slow comes between); without it,
    store_segment checks the plan still holds."""
    if lock:
        await conn.execute(_LOCK, {"call_id": call_id})
    latest, after = await _through(conn, call_id)
    new = [p for p in packets if p.entry > after]
    if not new:
        return Planned(None, after, after, locked=lock)
    segment = latest + 1 if latest is not None else 0
    return Planned(segment, after, new[-1].entry, build(new), locked=lock)


async def put_objects(objects: ObjectStore, call_id: str, plan: Planned) -> Planned:
    """The plan's bytes as objects, before any transaction (a slow store must hold no lock).
    A key names the segment, track and last entry, so a plan that then loses a race leaves at
    most an object no row names, found by the call's prefix (ObjectStore.delete_call)."""
    if plan.segment is None:
        return plan
    keys = {}
    for row in plan.rows:
        keys[row.track] = objects.key(call_id, plan.segment, row.track, plan.through)
        await objects.put(keys[row.track], row.payload)
    return replace(plan, keys=keys)


async def store_segment(conn: AsyncConnection, call_id: str, plan: Planned) -> Stored | None:
    """Insert a planned segment, in the caller's transaction, which it locks for the call; None
    if another flusher stored a segment since the plan was read (plan again: what is new has
    changed)."""
    if plan.segment is None:  # nothing new: the stored segments' end only ever grows
        return Stored(None, plan.after)
    if not plan.locked:
        await conn.execute(_LOCK, {"call_id": call_id})
        if (await _through(conn, call_id))[1] != plan.after:
            return None
    params = [
        {
            "call_id": call_id,
            "segment": plan.segment,
            "track": row.track,
            "last_ms": plan.through[0],
            "last_n": plan.through[1],
            "encoding": row.encoding,
            "packets": len(row.sequences),
            "first": row.sequences[0],
            "last": row.sequences[-1],
            "sequences": row.sequences,
            "sizes": row.sizes,
            "timestamps": row.timestamps,
            "arrivals": row.arrivals,
            "payload": b"" if row.track in plan.keys else row.payload,
            "object_key": plan.keys.get(row.track),
        }
        for row in plan.rows
    ]
    await conn.execute(_INSERT, params)
    return Stored(plan.segment, plan.through, plan.rows)


class _Arrays:
    """A stored row's packed arrays (_HEADS) as numpy arrays."""

    def __init__(self, row: Any) -> None:
        self.sequences = np.frombuffer(row.sequences or b"", dtype=">i8").astype(np.int64)
        self.sizes = np.frombuffer(row.sizes or b"", dtype=">i4").astype(np.int64)
        self.timestamps = np.frombuffer(row.timestamps or b"", dtype=">f8").astype(np.float64)
        self.arrivals = np.frombuffer(row.arrivals or b"", dtype=">f8").astype(np.float64)


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
        """Every row's head, read HEAD_ROWS rows at a time and compacted as they come, so only
        a few rows' per-packet arrays are ever held."""
        heads: list[SegmentHead] = []
        after = (-1, -1)
        while True:
            params = {"call_id": self.call_id, "segment": after[0], "track": after[1]}
            async with self.sessions() as session:
                result = await session.execute(_HEADS, {**params, "limit": HEAD_ROWS})
                page = [
                    head_of(int(r.segment), int(r.track), str(r.encoding), _Arrays(r))
                    for r in result
                ]
            heads.extend(page)
            if len(page) < HEAD_ROWS:
                return heads
            after = (page[-1].segment, page[-1].track)

    async def payload(self, segment: int, track: int) -> bytes:
        params = {"call_id": self.call_id, "segment": segment, "track": track}
        async with self.sessions() as session:
            row = (await session.execute(_PAYLOAD, params)).one_or_none()
        if row is None:
            return b""
        if row.object_key is None:
            return bytes(row.payload)
        return await _store_of(self.objects, self.call_id).get(str(row.object_key))

    async def payload_slice(self, segment: int, track: int, start: int, length: int) -> bytes:
        """Bytes [start, start + length) of a row's payload (fewer at its end), read alone."""
        params = {"call_id": self.call_id, "segment": segment, "track": track}
        async with self.sessions() as session:
            row = (
                await session.execute(_SLICE, {**params, "start": start + 1, "length": length})
            ).one_or_none()
        if row is None:
            return b""
        if row.object_key is None:
            return bytes(row.payload)
        objects = _store_of(self.objects, self.call_id)
        return await objects.get_range(str(row.object_key), start, length)

    async def version(self) -> tuple[int, int, int]:
        """(rows, latest segment, packets): changes whenever a segment is stored."""
        async with self.sessions() as session:
            row = (await session.execute(_VERSION, {"call_id": self.call_id})).one()
        return int(row.rows), int(row.latest), int(row.packets)
