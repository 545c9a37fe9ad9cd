"""What one call may cost (db/lua/ingest.lua): caps on its packets and data bytes that refuse a
request whole, and an idle clock that only new packets move."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from core.builders import call_limits
from db.intake import CallCap, CallFull, CallIntake, CallLimits
from db.keys import call_keys
from db.packets import NewPacket, Outcome
from settings import Settings
from tests.conftest import FEED


def packets(sequences: list[int], data: str = "x") -> list[NewPacket]:
    return [NewPacket(s, 1_700_000_000.0, data) for s in sequences]


async def everything(redis: Redis, call_id: str) -> dict[str, Any]:
    """All Redis holds of a call, to show that a refused request left no trace."""
    keys = call_keys(call_id)
    return {
        "stream": await redis.xrange(keys.packets),
        "meta": await redis.hgetall(keys.meta),  # type: ignore[misc]
        "runs": await redis.zrange(keys.runs, 0, -1, withscores=True),
        "idle": await redis.zscore(call_keys(call_id).shard.idle, call_id),
        "unflushed": await redis.zscore(call_keys(call_id).shard.unflushed, call_id),
    }


def capped(redis: Redis, max_packets: int = 1000, max_bytes: int = 10**6) -> CallIntake:
    return CallIntake(
        redis, feed=FEED, limits=CallLimits(max_packets=max_packets, max_bytes=max_bytes)
    )


async def test_a_packet_past_the_packet_cap_is_refused_and_nothing_is_stored(redis: Redis):
    intake = capped(redis, max_packets=3)
    await intake.append("c", packets([0, 1, 2]))
    before = await everything(redis, "c")

    with pytest.raises(CallFull) as refused:
        await intake.append("c", packets([3]))

    error = refused.value
    assert (error.call_id, error.cap, error.limit, error.stored, error.adding) == (
        "c",
        CallCap.PACKETS,
        3,
        3,
        1,
    )
    assert await everything(redis, "c") == before


async def test_a_batch_that_would_cross_the_cap_is_refused_whole(redis: Redis):
    intake = capped(redis, max_packets=3)
    await intake.append("c", packets([0]))
    before = await everything(redis, "c")

    with pytest.raises(CallFull) as refused:
        await intake.append("c", packets([1, 2, 3]))

    assert (refused.value.stored, refused.value.adding) == (1, 3)
    assert await everything(redis, "c") == before


async def test_a_new_call_larger_than_the_cap_leaves_nothing_at_all(redis: Redis):
    with pytest.raises(CallFull):
        await capped(redis, max_packets=2).append("c", packets([0, 1, 2]))

    assert await redis.keys("*") == []


async def test_duplicates_do_not_count_against_the_cap(redis: Redis):
    intake = capped(redis, max_packets=3)
    await intake.append("c", packets([0, 1]))

    results = await intake.append("c", packets([1, 2, 2, 0]))

    assert [r.outcome for r in results] == [
        Outcome.DUPLICATE,
        Outcome.IN_ORDER,
        Outcome.DUPLICATE,
        Outcome.DUPLICATE,
    ]


async def test_a_full_call_still_answers_its_duplicates(redis: Redis):
    intake = capped(redis, max_packets=2)
    await intake.append("c", packets([0, 1]))

    (result,) = await intake.append("c", packets([1]))

    assert result.outcome is Outcome.DUPLICATE


async def test_data_past_the_byte_cap_is_refused_counted_in_utf8_bytes(redis: Redis):
    intake = capped(redis, max_bytes=10)
    await intake.append("c", packets([0, 1], data="é" * 2))  # 8 bytes
    before = await everything(redis, "c")

    with pytest.raises(CallFull) as refused:
        await intake.append("c", packets([2], data="abc"))

    error = refused.value
    assert (error.cap, error.limit, error.stored, error.adding) == (CallCap.BYTES, 10, 8, 3)
    assert await everything(redis, "c") == before
    (fits,) = await intake.append("c", packets([2], data="ab"))
    assert fits.outcome is Outcome.IN_ORDER


def test_the_caps_are_the_settings_and_by_default_fit_a_four_hour_call():
    four_hours_at_50_per_s = 4 * 3600 * 50
    settings = Settings(_env_file=None)
    limits = call_limits(settings)

    assert limits == CallLimits(settings.max_call_packets, settings.max_call_bytes)
    assert four_hours_at_50_per_s <= limits.max_packets
    assert four_hours_at_50_per_s * 216 <= limits.max_bytes


async def idle_clock(redis: Redis, call_id: str) -> tuple[float | None, bytes | None]:
    meta_time = await redis.hget(call_keys(call_id).meta, "last_packet_at")  # type: ignore[misc]
    return await redis.zscore(call_keys(call_id).shard.idle, call_id), meta_time


async def test_a_duplicate_does_not_move_the_idle_clock(redis: Redis):
    intake = CallIntake(redis, feed=FEED)
    await intake.append("c", packets([1, 2]))
    started = await idle_clock(redis, "c")
    await asyncio.sleep(0.01)

    await intake.append("c", packets([2]))
    await intake.append("c", packets([1, 2, 1]))
    after_duplicates = await idle_clock(redis, "c")
    await intake.append("c", packets([3]))
    after_new = await idle_clock(redis, "c")

    assert started[0] is not None
    assert after_duplicates == started
    assert after_new[0] is not None
    assert after_new[0] > started[0]
    assert after_new[1] != started[1]
