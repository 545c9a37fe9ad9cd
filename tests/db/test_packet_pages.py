"""Reading a call's stream page by page (pure stream logic, on fakeredis)."""

from __future__ import annotations

import fakeredis

from db.flush import FlushSource
from db.keys import call_keys


async def test_packets_are_read_page_by_page_in_arrival_order_without_gaps_or_repeats():
    redis = fakeredis.FakeAsyncRedis()
    stream = call_keys("c").packets
    for seq in range(2500):
        await redis.xadd(stream, {"s": str(seq), "t": f"{seq / 50}", "d": f"data-{seq}"})

    pages = [page async for page in FlushSource(redis).packet_pages("c", page_size=1000)]
    packets = [p for page in pages for p in page]

    assert [len(page) for page in pages] == [1000, 1000, 500]
    assert [p.sequence for p in packets] == list(range(2500))
    assert packets[42].data == "data-42"
    assert packets[42].timestamp == 42 / 50
    assert all(p.received_at > 0 for p in packets)
    await redis.aclose()


async def test_an_empty_stream_yields_nothing():
    redis = fakeredis.FakeAsyncRedis()

    assert [page async for page in FlushSource(redis).packet_pages("nobody")] == []
    await redis.aclose()
