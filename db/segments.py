"""A call's audio at rest: its segments, one row per track, written once each.

A segment is the entries of the call's stream after the latest stored segment's last entry, in
stream order. `plan_segment` reads where the latest segment ended and builds the rows of what
comes after it (a read alone, on an autocommit connection); with an object store
(AUDIO_STORE_URL) `put_objects` then PUTs their bytes, with no transaction or connection held;
`store_segment` inserts the rows in one statement, only if no other flusher stored the same
segment number first, else says to plan again.

One statement, one round trip, and no lock: two flushers racing (a segment job and the call's
final flush, or a re-run after a worker died between a commit and its trim) that read the same
latest segment plan the same number, and both plans start at the same entry (the first after
that segment's last: a page is read from the stream's start, and entries leave the stream only
once stored), so both have a row for that entry's track. That row is inserted first and the
others only if it went in: its key (call, segment, track) lets one flusher in, and the other,
waiting for it, stores nothing and plans again. A stale plan cannot store anywhere else: its
number is the one after the latest segment it read, which exists once anyone stored after it.
So a packet is never stored twice, and a flusher that read a stale page stores only what is new
in it. The stream's ids grow with time (Redis gives each entry max(now in ms, the last id)), so
"after the last one stored" is exactly "not stored yet".

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
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from db.direct import Direct, Executor
from db.object_store import NoObjectStore, ObjectStore
from db.packets import TRACKS, StoredPacket
from db.pg_arrays import ints_text

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


_LATEST = text(
    "SELECT segment, last_entry_ms, last_entry_n FROM call_segment WHERE call_id = :call_id"
    " ORDER BY segment DESC LIMIT 1"
)
# The columns a segment's row is inserted with, and their types (a parameter in a SELECT's list
# has none of its own: the cast gives it its column's).
_COLUMNS = {
    "call_id": "text",
    "segment": "int",
    "track": "smallint",
    "last_entry_ms": "bigint",
    "last_entry_n": "bigint",
    "encoding": "text",
    "packets": "int",
    "first_sequence": "bigint",
    "last_sequence": "bigint",
    "sequences": "bigint[]",
    "sizes": "int[]",
    "timestamps": "float8[]",
    "arrivals": "float8[]",
    "payload": "bytea",
    "object_key": "text",
}
_SHARED = {"call_id", "segment", "last_entry_ms", "last_entry_n"}  # the same in every row
# The integer arrays go as their text form, cast in the statement; the floats' as lists
# (db/pg_arrays.py says why).
_TEXT_ARRAYS = {"sequences", "sizes"}


def _row_values(n: int) -> str:
    """Row `n`'s values: parameters named after their column (suffixed with the row's number
    unless every row shares them); an integer array's parameter is its text form."""
    values = []
    for column, type_ in _COLUMNS.items():
        param = f":{column if column in _SHARED else f'{column}_{n}'}"
        if column in _TEXT_ARRAYS:
            param = f"CAST({param} AS text)"
        values.append(f"CAST({param} AS {type_})")
    return ", ".join(values)


def _insert(rows: int) -> TextClause:
    """A segment of `rows` rows in one statement: row 0 (the track of the segment's first entry)
    under its key, the others only if it went in (the module's docstring says why that is
    enough). Returns 1 if the segment was stored, 0 if another flusher stored it first."""
    columns = ", ".join(_COLUMNS)
    rest = " UNION ALL ".join(f"SELECT {_row_values(n)} FROM gate" for n in range(1, rows))
    if rest:
        rest = f", rest AS (INSERT INTO call_segment ({columns}) {rest})"
    return text(
        f"WITH gate AS (INSERT INTO call_segment ({columns}) VALUES ({_row_values(0)})"
        f" ON CONFLICT DO NOTHING RETURNING 1){rest} SELECT count(*) FROM gate"
    )


_INSERTS = {rows: Direct(_insert(rows)) for rows in range(1, len(TRACKS) + 1)}


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


async def highest_sequences(conn: AsyncConnection, call_id: str) -> dict[int, int]:
    """Each track's highest sequence stored, for a plan (a segment stored after this read makes
    its store_segment store nothing, and the flusher plans again, reading these anew)."""
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
    segment's last entry when it was read; (-1, -1): none), the first of them the track of its
    first entry; and the object keys their bytes went to (none without an object store).
    `segment` None: nothing was new."""

    segment: int | None
    after: tuple[int, int]
    through: tuple[int, int]
    rows: Sequence[SegmentRow] = ()
    keys: dict[int, str] = field(default_factory=dict)


async def _through(conn: AsyncConnection, call_id: str) -> tuple[int | None, tuple[int, int]]:
    """The latest stored segment and its last stream entry ((None, (-1, -1)): none yet)."""
    latest = (await conn.execute(_LATEST, {"call_id": call_id})).one_or_none()
    if latest is None:
        return None, (-1, -1)
    return int(latest.segment), (int(latest.last_entry_ms), int(latest.last_entry_n))


# What plan_segment is told when the caller knows no segment of the call left its stream yet.
NONE_TRIMMED = (None, (-1, -1))


async def plan_segment(
    conn: AsyncConnection | None,
    call_id: str,
    packets: Sequence[StoredPacket],
    build: Build,
    known: tuple[int | None, tuple[int, int]] | None = None,
) -> Planned:
    """The call's next segment: those of `packets` (in stream order) that come after the latest
    stored segment, built into rows. `known`: NONE_TRIMMED when no stored segment's entries
    ever left the stream (Redis' seg_trimmed), planned as the first segment without a read: if
    one was stored after all (its flusher died before the trim), it starts at the stream's
    first entry, as this plan does, so the plan collides with it and stores nothing, and the
    next plan reads. `conn`: for the read, None only with `known`."""
    if known is None:
        assert conn is not None, "a plan that reads needs a connection"
        known = await _through(conn, call_id)
    latest, after = known
    new = [p for p in packets if p.entry > after]
    if not new:
        return Planned(None, after, after)
    segment = latest + 1 if latest is not None else 0
    first = new[0].track
    rows = sorted(build(new), key=lambda row: row.track != first)  # stable: the rest in order
    return Planned(segment, after, new[-1].entry, rows)


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


async def store_segment(on: Executor, call_id: str, plan: Planned) -> Stored | None:
    """Insert a planned segment in one statement (atomic on its own: an autocommit connection,
    or the pool, will do); None if another flusher stored that segment first (plan again: what
    is new has changed)."""
    if plan.segment is None:  # nothing new: the stored segments' end only ever grows
        return Stored(None, plan.after)
    params: dict[str, Any] = {
        "call_id": call_id,
        "segment": plan.segment,
        "last_entry_ms": plan.through[0],
        "last_entry_n": plan.through[1],
    }
    for n, row in enumerate(plan.rows):
        params |= {
            f"track_{n}": row.track,
            f"encoding_{n}": row.encoding,
            f"packets_{n}": len(row.sequences),
            f"first_sequence_{n}": row.sequences[0],
            f"last_sequence_{n}": row.sequences[-1],
            f"sequences_{n}": ints_text(row.sequences),
            f"sizes_{n}": ints_text(row.sizes),
            f"timestamps_{n}": row.timestamps,
            f"arrivals_{n}": row.arrivals,
            f"payload_{n}": b"" if row.track in plan.keys else row.payload,
            f"object_key_{n}": plan.keys.get(row.track),
        }
    if not await _INSERTS[len(plan.rows)].scalar(on, params):
        return None
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
        heads: Sequence[SegmentHead] | None = None,
    ) -> None:
        """`objects`: where rows that name an object keep their bytes (AUDIO_STORE_URL); rows
        written before it was set keep theirs in PostgreSQL, and are read from there. `heads`:
        every row's head, if the caller knows them (it stored every segment of the call:
        jobs/segments.py's Flushed.heads), so they need no read; the bytes are read as ever."""
        self.sessions = sessions
        self.call_id = call_id
        self.objects = objects
        self.known = heads

    async def heads(self) -> list[SegmentHead]:
        """Every row's head, read HEAD_ROWS rows at a time and compacted as they come, so only
        a few rows' per-packet arrays are ever held."""
        if self.known is not None:
            return list(self.known)
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
