"""db/segments.py's plan_segment and store_segment against the real PostgreSQL: a segment is
stored in one statement, once, whoever races for it, and never in part."""

from __future__ import annotations

import asyncio
import struct

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.recording import build_rows
from db.engine import make_sessionmaker
from db.packets import StoredPacket
from db.segments import (
    TEXT,
    Planned,
    SegmentReader,
    SegmentRow,
    Stored,
    plan_segment,
    store_segment,
)
from tests.factories import rows


def packets(*tracks: int, first_ms: int = 1000) -> list[StoredPacket]:
    """Stream entries, one a millisecond, of the given tracks in turn (text packets)."""
    seq = {0: 0, 1: 0}
    out = []
    for n, track in enumerate(tracks):
        out.append(StoredPacket(seq[track], seq[track] * 0.02, f"said-{track}-{seq[track]}",
                                (first_ms + n) / 1000, track, (first_ms + n, 0)))  # fmt: skip
        seq[track] += 1
    return out


def build(new: list[StoredPacket]) -> list[SegmentRow]:
    return build_rows(new, None, False)


async def plan(engine: AsyncEngine, call_id: str, page: list[StoredPacket]) -> Planned:
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return await plan_segment(auto, call_id, page, build)


async def store(conn: AsyncConnection, call_id: str, planned: Planned) -> Stored | None:
    return await store_segment(conn, call_id, planned)


async def store_alone(engine: AsyncEngine, call_id: str, planned: Planned) -> Stored | None:
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return await store(auto, call_id, planned)


async def stored_rows(engine: AsyncEngine, call_id: str) -> list[tuple[int, int, list[int]]]:
    found = await rows(
        engine,
        f"SELECT segment, track, sequences FROM call_segment WHERE call_id = '{call_id}'"
        " ORDER BY segment, track",
    )
    return [(r.segment, r.track, list(r.sequences)) for r in found]


async def test_segments_follow_each_other_each_with_a_row_per_track(engine: AsyncEngine):
    page = packets(0, 1, 0, 1)
    first = await store_alone(engine, "seg-a", await plan(engine, "seg-a", page))
    assert first is not None
    assert first.segment == 0
    more = [*page, *packets(1, 0, first_ms=2000)]  # a stale page: its start is stored already
    second = await store_alone(engine, "seg-a", await plan(engine, "seg-a", more))
    assert second is not None
    assert second.segment == 1

    assert await stored_rows(engine, "seg-a") == [
        (0, 0, [0, 1]), (0, 1, [0, 1]), (1, 0, [0]), (1, 1, [0]),
    ]  # fmt: skip


async def test_two_flushers_that_planned_the_same_segment_store_it_once(engine: AsyncEngine):
    page = packets(0, 0, 1)
    mine, theirs = await plan(engine, "seg-b", page), await plan(engine, "seg-b", page)

    assert await store_alone(engine, "seg-b", theirs) is not None
    assert await store_alone(engine, "seg-b", mine) is None  # plan again

    again = await store_alone(engine, "seg-b", await plan(engine, "seg-b", page))
    assert again == Stored(None, (1002, 0))  # nothing new: the page is stored
    assert await stored_rows(engine, "seg-b") == [(0, 0, [0, 1]), (0, 1, [0])]


async def test_a_longer_plan_that_lost_the_race_stores_none_of_its_rows(engine: AsyncEngine):
    # The winner read the stream while it held only the caller's first packets; the loser read
    # it later, with the agent's too. The loser's agent row would not collide with any of the
    # winner's: it must not go in alone.
    early, late = packets(0, 0), packets(0, 0, 1, 1)
    winner, loser = await plan(engine, "seg-c", early), await plan(engine, "seg-c", late)

    assert await store_alone(engine, "seg-c", winner) is not None
    assert await store_alone(engine, "seg-c", loser) is None

    assert await stored_rows(engine, "seg-c") == [(0, 0, [0, 1])]
    retried = await store_alone(engine, "seg-c", await plan(engine, "seg-c", late))
    assert retried is not None
    assert retried.segment == 1
    assert await stored_rows(engine, "seg-c") == [(0, 0, [0, 1]), (1, 1, [0, 1])]


async def test_a_plan_gone_stale_by_two_segments_stores_nothing(engine: AsyncEngine):
    page = packets(1, 0, 1)
    stale = await plan(engine, "seg-d", page)
    assert await store_alone(engine, "seg-d", await plan(engine, "seg-d", page[:1])) is not None
    assert await store_alone(engine, "seg-d", await plan(engine, "seg-d", page)) is not None

    assert await store_alone(engine, "seg-d", stale) is None
    assert await stored_rows(engine, "seg-d") == [(0, 1, [0]), (1, 0, [0]), (1, 1, [1])]


async def test_a_racing_insert_waits_for_the_first_to_commit_then_stores_nothing(
    engine: AsyncEngine,
):
    page = packets(0, 1)
    mine, theirs = await plan(engine, "seg-e", page), await plan(engine, "seg-e", page)
    async with engine.connect() as first:
        async with first.begin():
            assert await store(first, "seg-e", theirs) is not None  # not committed yet
            racing = asyncio.create_task(store_alone(engine, "seg-e", mine))
            await asyncio.sleep(0.3)
            assert not racing.done()  # it waits on the uncommitted row's key
        assert await asyncio.wait_for(racing, 5) is None
    assert await stored_rows(engine, "seg-e") == [(0, 0, [0]), (0, 1, [0])]


async def test_a_racing_insert_goes_in_when_the_first_rolls_back(engine: AsyncEngine):
    # A flusher that dies before its commit leaves the segment to the other.
    page = packets(1, 0)
    mine, theirs = await plan(engine, "seg-f", page), await plan(engine, "seg-f", page)
    async with engine.connect() as first:
        tx = await first.begin()
        assert await store(first, "seg-f", theirs) is not None
        racing = asyncio.create_task(store_alone(engine, "seg-f", mine))
        await asyncio.sleep(0.3)
        await tx.rollback()
    assert await asyncio.wait_for(racing, 5) is not None
    assert await stored_rows(engine, "seg-f") == [(0, 0, [0]), (0, 1, [0])]


# Values a text or float encoding could get wrong: past a float's integers, the int64 range's
# ends, and floats whose shortest decimal is long, the smallest (subnormal), the largest, -0.0.
SEQUENCES = [0, 7, 2**53 - 1, 2**53 + 1, 2**62 + 3, 2**63 - 1]  # no two consecutive: a run each
SIZES = [1, 10, 100, 3, 2**20, 0]
AWKWARD = [0.1 + 0.2, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1 / 3]
ARRIVALS = [1_700_000_000.123, 1_700_000_000.02 + 1e-6, 0.0, -1.5, 2.0**-1074 * 3, 1e300]


def bits(values: list[float]) -> list[bytes]:
    return [struct.pack(">d", v) for v in values]


async def test_a_rows_arrays_read_back_bit_for_bit_stored_or_read_as_runs(engine: AsyncEngine):
    awkward = SegmentRow(0, TEXT, SEQUENCES, SIZES, AWKWARD, ARRIVALS, b"x" * sum(SIZES))
    alone = SegmentRow(1, TEXT, [2**53 + 1], [2], [-0.0], [5e-324], b"yy")  # one-element arrays
    await store_alone(engine, "seg-exact", Planned(0, (-1, -1), (1000, 0), [awkward, alone]))

    found = await rows(
        engine,
        "SELECT sequences, sizes, timestamps, arrivals FROM call_segment"
        " WHERE call_id = 'seg-exact' ORDER BY track",
    )
    for row, stored in zip([awkward, alone], found, strict=True):
        assert (list(stored.sequences), list(stored.sizes)) == (row.sequences, row.sizes)
        assert bits(list(stored.timestamps)) == bits(row.timestamps)
        assert bits(list(stored.arrivals)) == bits(row.arrivals)
    heads = await SegmentReader(make_sessionmaker(engine), "seg-exact").heads()
    runs = heads[0].runs  # a run a packet: its first values are every packet's
    assert (runs.first.tolist(), runs.size.tolist()) == (SEQUENCES, SIZES)
    assert bits(runs.first_timestamp.tolist()) == bits(AWKWARD)
    assert bits(runs.first_arrival.tolist()) == bits(ARRIVALS)
