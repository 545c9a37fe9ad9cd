"""Reading a call's unflushed tail a page at a time: the stream logic on fakeredis, the
replies' two shapes (unparsed, parsed by redis-py) on a real Redis and Cluster."""

from __future__ import annotations

import fakeredis
import pytest
from redis.asyncio import Redis

from db.flush import FlushSource
from db.keys import call_keys
from tests.conftest import FEED


async def test_the_tail_is_read_page_by_page_in_arrival_order_without_gaps_or_repeats():
    redis = fakeredis.FakeAsyncRedis()
    stream = call_keys("c").packets
    for seq in range(2500):
        fields = {"k": str(seq % 2), "s": str(seq), "t": f"{seq / 50}", "d": f"data-{seq}"}
        await redis.xadd(stream, fields)  # type: ignore[arg-type]
    source = FlushSource(redis, FEED)

    pages, after = [], None
    while page := await source.entries("c", 1000, after):
        pages.append(page)
        after = page[-1].entry
    packets = [p for page in pages for p in page]

    assert [len(page) for page in pages] == [1000, 1000, 500]
    assert [p.sequence for p in packets] == list(range(2500))
    assert [p.track for p in packets[:4]] == [0, 1, 0, 1]
    assert packets[42].data == "data-42"
    assert packets[42].timestamp == 42 / 50
    assert all(p.received_at > 0 for p in packets)
    assert [p.entry for p in packets] == sorted(p.entry for p in packets)
    await redis.aclose()


async def test_an_empty_stream_yields_nothing():
    redis = fakeredis.FakeAsyncRedis()

    assert await FlushSource(redis, FEED).entries("nobody", 10) == []
    await redis.aclose()


@pytest.mark.both_topologies
async def test_entries_read_from_a_real_redis_are_the_packets_added_whatever_their_field_order(
    redis: Redis,
):
    """On a single Redis the pages come unparsed (read by place when in ingest.lua's order, by
    name otherwise); on a cluster redis-py parses them: the packets are the same."""
    stream = call_keys("order").packets
    in_order = {"k": "1", "s": "7", "t": "1.5", "d": "AAAA"}
    reordered = {"d": "BBBB", "t": "2.5", "s": "8"}  # no track: inbound
    await redis.xadd(stream, in_order)  # type: ignore[arg-type]
    await redis.xadd(stream, reordered)  # type: ignore[arg-type]
    source = FlushSource(redis, FEED)

    first, second = await source.entries("order", 10)
    page, more = await source.page("order", 10, 1 << 20)

    assert (first.track, first.sequence, first.timestamp, first.data) == (1, 7, 1.5, "AAAA")
    assert (second.track, second.sequence, second.timestamp, second.data) == (0, 8, 2.5, "BBBB")
    assert first.entry < second.entry
    assert first.received_at == first.entry[0] / 1000
    assert (page, more) == ([first, second], False)
    started = await source.start("order", "holder", 1.0, 10)
    assert started.first_page == [first, second]
