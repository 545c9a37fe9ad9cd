"""A Redis Cluster's feed relay: the scripts append a call's events to its shard's outbox (its
slot), and the relay moves them to the one feed, in order per shard, exactly once, even with two
relays at work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from db.events import EventLog
from db.feed_relay import FeedRelay
from db.intake import CallIntake
from db.keys import ALL_SHARDS, EVENTS, call_keys
from db.packets import NewPacket
from db.redis_client import RedisClient, close_redis, make_redis
from tests.conftest import FEED


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisClient]:
    client = make_redis(
        redis_cluster_url, max_connections=64, connect_timeout_s=2, read_timeout_s=5
    )
    yield client
    await close_redis(client)


async def stream_calls(cluster: RedisClient, calls: int) -> list[str]:
    intake = CallIntake(cluster, feed=FEED)
    call_ids = [f"call-{n}" for n in range(calls)]
    for call_id in call_ids:
        await intake.append(call_id, [NewPacket(1, 1.0, "x")])
        await intake.complete(call_id, "explicit")
    return call_ids


async def feed(cluster: RedisClient) -> list[tuple[str, str]]:
    return [(e.call_id, e.state) for e in await EventLog(cluster, FEED).after("0-0", 10_000)]


async def test_the_scripts_write_to_their_shard_s_outbox_and_the_relay_moves_them_once(
    cluster: RedisClient,
) -> None:
    call_ids = await stream_calls(cluster, 40)
    assert await cluster.exists(EVENTS) == 0  # nothing crosses slots in the scripts
    assert await cluster.xlen(call_keys("call-0").shard.outbox) > 0

    relay = FeedRelay(cluster, FEED)
    assert await relay.step() == 80
    assert await relay.step() == 0  # nothing twice

    events = await feed(cluster)
    assert sorted(events) == sorted(
        [(c, "IN_PROGRESS") for c in call_ids] + [(c, "COMPLETED") for c in call_ids]
    )
    for call_id in call_ids:  # in order per call
        assert [s for c, s in events if c == call_id] == ["IN_PROGRESS", "COMPLETED"]
    # What was moved leaves the outboxes (up to each shard's last moved entry).
    left = sum([await cluster.xlen(shard.outbox) for shard in ALL_SHARDS])
    assert left <= len(ALL_SHARDS)


async def test_two_relays_at_once_still_move_every_event_exactly_once(
    cluster: RedisClient,
) -> None:
    call_ids = await stream_calls(cluster, 60)
    relays = [FeedRelay(cluster, FEED), FeedRelay(cluster, FEED)]
    for _ in range(3):
        await asyncio.gather(*(relay.step() for relay in relays))
    events = await feed(cluster)
    assert len(events) == 2 * len(call_ids)
    assert len(set(events)) == len(events)


async def test_one_relay_holds_the_lease_and_another_takes_over_when_it_lapses(
    cluster: RedisClient,
) -> None:
    first, second = FeedRelay(cluster, FEED), FeedRelay(cluster, FEED)
    assert await first.hold("a", 200)
    assert not await second.hold("b", 200)
    assert await first.hold("a", 200)  # renewed by its holder
    await asyncio.sleep(0.3)
    assert await second.hold("b", 200)
