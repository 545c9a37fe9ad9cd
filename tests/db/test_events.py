"""The live feed's store: the scripts append a call's events in the same step as its change, a
live call's progress is throttled, and the feed stays within its window."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from redis.asyncio import Redis

from db.events import EventLog, FeedLimits, id_key
from db.intake import CallCompleted, CallIntake
from db.keys import EVENTS
from db.packets import NewPacket
from tests.conftest import FEED


def packets(*sequences: int) -> list[NewPacket]:
    return [NewPacket(s, 1_700_000_000.0 + s, f"d{s}") for s in sequences]


async def bodies(redis: Redis, type_: str | None = None) -> list[dict[str, Any]]:
    events = await EventLog(redis, FEED).after("0-0", 10_000)
    return [e.body for e in events if type_ is None or e.type == type_]


async def test_a_calls_first_packet_publishes_in_progress_once(redis: Redis) -> None:
    intake = CallIntake(redis, feed=FEED)
    await intake.append("c1", packets(1, 2))
    await intake.append("c1", packets(1, 3))

    states = await bodies(redis, "state")
    assert [(b["call_id"], b["state"]) for b in states] == [("c1", "IN_PROGRESS")]
    assert states[0]["reason"] is None
    assert isinstance(states[0]["at"], float)


async def test_packets_that_are_all_refused_publish_nothing(redis: Redis) -> None:
    intake = CallIntake(redis, feed=FEED)
    await intake.append("c1", packets(1))
    await intake.complete("c1", "explicit")
    before = await redis.xlen(EVENTS)

    with pytest.raises(CallCompleted):
        await intake.append("c1", packets(2))
    assert await redis.xlen(EVENTS) == before


async def test_progress_is_published_at_most_once_per_interval(redis: Redis) -> None:
    intake = CallIntake(redis, feed=dataclasses.replace(FEED, progress_interval_s=0.05))
    await intake.append("c1", packets(1))
    for sequence in range(2, 12):  # well inside one interval
        await intake.append("c1", packets(sequence))
    assert await bodies(redis, "progress") == []

    await asyncio.sleep(0.06)
    await intake.append("c1", packets(14, 13, 13))  # a gap, a reordering and a duplicate
    (progress,) = await bodies(redis, "progress")
    assert progress["call_id"] == "c1"
    assert progress["state"] == "IN_PROGRESS"
    assert progress["received"] == 13
    assert progress["duplicates"] == 1
    assert progress["out_of_order"] == 1
    assert progress["missing"] == 1  # sequence 12
    assert progress["data_bytes"] == sum(len(f"d{s}") for s in range(1, 15) if s != 12)


async def test_no_progress_events_with_a_zero_interval(redis: Redis) -> None:
    intake = CallIntake(redis, feed=dataclasses.replace(FEED, progress_interval_s=0))
    for sequence in range(1, 5):
        await intake.append("c1", packets(sequence))
        await asyncio.sleep(0.01)
    assert [b["type"] for b in await bodies(redis)] == ["state"]


async def test_the_completion_that_wins_publishes_completed_with_its_reason(redis: Redis) -> None:
    intake = CallIntake(redis, feed=FEED)
    await intake.append("c1", packets(1))
    await asyncio.gather(*(intake.complete("c1", "idle") for _ in range(5)))

    completed = [b for b in await bodies(redis, "state") if b["state"] == "COMPLETED"]
    assert completed == [
        {
            "type": "state",
            "call_id": "c1",
            "state": "COMPLETED",
            "reason": "idle",
            "at": completed[0]["at"],
        }
    ]


async def test_a_replay_publishes_completed_with_reason_replay(redis: Redis) -> None:
    await CallIntake(redis, feed=FEED).mark_replayed("c1")
    (event,) = await bodies(redis)
    assert (event["state"], event["reason"]) == ("COMPLETED", "replay")


async def test_the_feed_is_trimmed_to_about_its_max_length(redis: Redis) -> None:
    intake = CallIntake(redis, feed=FeedLimits(max_len=100, progress_interval_s=0))
    for n in range(600):
        await intake.append(f"c{n}", packets(1))
    length = await redis.xlen(EVENTS)
    # Trimmed whole nodes at a time (MAXLEN ~): never below the window, never far above it.
    assert 100 <= length < 300


async def test_event_ids_increase_and_a_resume_reads_exactly_what_follows(redis: Redis) -> None:
    log = EventLog(redis, FEED)
    await log.publish(
        *({"type": "state", "call_id": f"c{n}", "state": "ARCHIVED"} for n in range(10))
    )
    events = await log.after("0-0", 100)
    assert [id_key(e.id) for e in events] == sorted(id_key(e.id) for e in events)
    after_third = await log.after(events[2].id, 100)
    assert [e.call_id for e in after_third] == [f"c{n}" for n in range(3, 10)]


async def test_lost_since_tells_when_the_resume_point_was_trimmed(redis: Redis) -> None:
    log = EventLog(redis, FEED)
    await log.publish({"type": "state", "call_id": "old", "state": "ARCHIVED"})
    (old,) = await log.after("0-0", 10)
    assert not await log.lost_since(old.id)
    await log.publish({"type": "state", "call_id": "new", "state": "ARCHIVED"})
    await redis.xtrim(EVENTS, maxlen=1, approximate=False)
    assert await log.lost_since(old.id)
