"""What the worker tells the live feed: PROCESSING_AI, every AI attempt's outcome, and the final
state (published with the release, and again by a re-run that finds the call settled)."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import AsyncClient
from redis.asyncio import Redis

from db.events import EventLog
from db.feed_relay import FeedRelay
from db.redis_client import is_cluster
from jobs.ai import PermanentAIError, TransientAIError
from jobs.process import process_call
from jobs.resources import WorkerResources
from tests.conftest import FEED
from tests.factories import complete, send
from tests.fakes import ScriptedAI

# The worker's events reach the feed on a Redis Cluster too (through the shards' outboxes).
pytestmark = pytest.mark.both_topologies


async def call_events(redis: Redis, call_id: str) -> list[dict[str, Any]]:
    if is_cluster(redis):
        while await FeedRelay(redis, FEED).step():  # what a worker's relay loop does
            pass
    return [e.body for e in await EventLog(redis, FEED).after("0-0", 1000) if e.call_id == call_id]


def story(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (e["type"], e["state"], e.get("step"), e.get("outcome"))
        for e in events
        if e["type"] != "progress"
    ]


async def test_an_archived_call_tells_each_step_in_order(
    client: AsyncClient, run_worker: Any, redis: Redis
) -> None:
    for seq, word in enumerate(["thanks", "all", "resolved"]):
        await send(client, "c1", seq, word)
    await complete(client, "c1")
    await run_worker()

    events = await call_events(redis, "c1")
    assert story(events) == [
        ("state", "IN_PROGRESS", None, None),
        ("state", "COMPLETED", None, None),
        ("segment", "COMPLETED", None, None),  # the call's audio, stored once
        ("state", "PROCESSING_AI", None, None),
        ("utterance", "PROCESSING_AI", None, None),  # told as it is stored
        ("attempt", "PROCESSING_AI", "transcription", "ok"),
        ("attempt", "PROCESSING_AI", "sentiment", "ok"),
        ("state", "ARCHIVED", None, None),
    ]
    archived = events[-1]
    assert archived["sentiment"] == {"label": "positive", "score": 1.0}
    assert archived["transcript_excerpt"] == "thanks all resolved"
    assert archived["reason"] is None
    assert (events[2]["packets"], events[2]["segment"]) == (3, 0)
    assert (events[4]["speaker"], events[4]["text"]) == ("caller", "thanks all resolved")
    attempt = events[5]
    assert attempt["attempt"] == 1
    assert attempt["error"] is None
    assert attempt["duration_ms"] >= 0


async def test_failed_attempts_and_a_failed_call_are_told_with_their_reasons(
    client: AsyncClient, run_worker: Any, redis: Redis, ai: ScriptedAI
) -> None:
    ai.fail("transcription", TransientAIError("503 from the provider"))
    ai.fail("sentiment", PermanentAIError("400: the text is empty"))
    await send(client, "c1", 0, "hello")
    await complete(client, "c1")
    await run_worker()

    events = [e for e in await call_events(redis, "c1") if e["state"] != "IN_PROGRESS"]
    assert story(events)[1:] == [
        ("segment", "COMPLETED", None, None),
        ("state", "PROCESSING_AI", None, None),
        ("attempt", "PROCESSING_AI", "transcription", "error"),  # told at once: a failure
        ("utterance", "PROCESSING_AI", None, None),
        ("attempt", "PROCESSING_AI", "transcription", "ok"),
        ("attempt", "PROCESSING_AI", "sentiment", "rejected"),
        ("state", "FAILED", None, None),
    ]
    assert "503 from the provider" in events[3]["error"]
    assert (events[3]["attempt"], events[5]["attempt"]) == (1, 2)
    assert "400: the text is empty" in events[-1]["reason"]
    assert "sentiment" not in events[-1]


async def test_a_rerun_that_finds_the_call_settled_tells_its_final_state_again(
    client: AsyncClient, run_worker: Any, redis: Redis, worker_resources: WorkerResources
) -> None:
    await send(client, "c1", 0, "great")
    await complete(client, "c1")
    await run_worker()

    # A worker that died between its commit and its release leaves the final event unsent:
    # the job's next run finds the call settled and publishes it with the release.
    assert await process_call(worker_resources, "c1") == "ARCHIVED"
    finals = [e for e in await call_events(redis, "c1") if e["state"] == "ARCHIVED"]
    assert len(finals) == 2
    assert finals[1]["sentiment"] == finals[0]["sentiment"]
    assert finals[1]["transcript_excerpt"] == "great"


async def test_a_replayed_dead_letter_is_told_as_completed_again(
    client: AsyncClient, run_worker: Any, redis: Redis, ai: ScriptedAI
) -> None:
    ai.fail("transcription", PermanentAIError("401: bad key"))
    await send(client, "c1", 0, "fine")
    await complete(client, "c1")
    await run_worker()
    assert (await client.post("/v1/calls/c1/retry")).status_code == 202
    await run_worker()

    states = [e["state"] for e in await call_events(redis, "c1") if e["type"] == "state"]
    assert states == [
        "IN_PROGRESS",
        "COMPLETED",
        "PROCESSING_AI",
        "FAILED",
        "COMPLETED",
        "PROCESSING_AI",
        "ARCHIVED",
    ]
