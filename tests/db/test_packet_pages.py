"""Reading a call's unflushed tail a page at a time (pure stream logic, on fakeredis)."""

from __future__ import annotations

import fakeredis

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
