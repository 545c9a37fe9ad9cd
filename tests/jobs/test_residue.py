"""What a finished call leaves in Redis, against a real Redis, PostgreSQL, uvicorn and arq worker:
its done marker and nothing else (docs/operations.md, "What Redis holds"): no hash, no stream,
no index entry, no arq job, result or marker, whatever it went through (live segments and their
transcription, a FAILED end and its replay); and the marker still does its work."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from httpx import AsyncClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import connect

from db.keys import ALL_SHARDS, call_keys
from jobs.ai import TransientAIError
from service.app import create_app
from settings import Settings
from tests.conftest import make_settings
from tests.factories import complete, scalar, send, send_all, status
from tests.fakes import ScriptedAI
from tests.service.test_recording import speech, two_track_stream, wait_state
from tests.serving import serving, worker_running


async def keys_naming(redis: Redis, call_id: str) -> dict[str, int]:
    """Every key whose name holds the call's id (its own, arq's), with its TTL."""
    return {
        key.decode(): int(await redis.ttl(key))
        async for key in redis.scan_iter(match=f"*{call_id}*", count=1000)
    }


async def indexed(redis: Redis, call_id: str) -> list[str]:
    shard = call_keys(call_id).shard
    return [k for k in (shard.idle, shard.unflushed, shard.pending, shard.segments)
            if await redis.zscore(k, call_id) is not None]  # fmt: skip


async def settled(redis: Redis, call_id: str, limit_s: float = 10.0) -> dict[str, int]:
    """The call's keys once its jobs are all done: a live pass's follow-up flush is deferred a
    few seconds (jobs/transcription.py's FOLLOW_UP_S), and goes too once it has run."""
    deadline = time.monotonic() + limit_s
    while True:
        left = await keys_naming(redis, call_id)
        if not any(k.startswith("arq:") for k in left) or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


def only_the_marker(left: dict[str, int], call_id: str, settings: Settings) -> None:
    marker = call_keys(call_id).done
    assert set(left) == {marker}, left
    assert 0 < left[marker] <= settings.completed_marker_retention_s


@pytest.fixture
def live(server_urls: tuple[str, str]) -> Settings:
    db_url, redis_url = server_urls
    return make_settings(db_url, redis_url, segment_seconds=2.0)


@pytest.mark.timeout(60)
async def test_a_two_track_call_with_live_segments_leaves_only_its_done_marker(
    live: Settings, redis: Redis, engine: AsyncEngine
):
    seconds = 7.0  # segments of 2 s: live flushes, live transcription passes, their follow-ups
    caller = speech(["positive-1", "negative-1"], seconds)
    agent = speech(["neutral-2", "positive-2"], seconds)
    messages = two_track_stream("CA-RESIDUE", caller, agent)

    async with serving(create_app(live)) as api, worker_running(live):
        async with connect(f"ws://{api}/v1/call/media") as ws:
            for n, message in enumerate(messages[:-1]):
                await ws.send(message)
                if n % 100 == 0:
                    await asyncio.sleep(0.05)  # ~25x real time: segments flush as it goes
            await ws.send(messages[-1])
        async with httpx.AsyncClient(base_url=f"http://{api}") as http:
            assert (await wait_state(http, "CA-RESIDUE", "ARCHIVED", 30))["state"] == "ARCHIVED"
            left = await settled(redis, "CA-RESIDUE")

            only_the_marker(left, "CA-RESIDUE", live)
            segments = "SELECT count(DISTINCT segment) FROM call_segment WHERE call_id = :c"
            assert await scalar(engine, segments, c="CA-RESIDUE") >= 2  # flushed as it went
            assert await indexed(redis, "CA-RESIDUE") == []
            # The marker still refuses late packets, and a completion answers with the state.
            late = await http.post(
                "/v1/call/stream/CA-RESIDUE",
                json={"sequence": 99_999, "data": "late", "timestamp": 1.0},
            )
            assert late.status_code == 409
            again = await http.post("/v1/call/complete/CA-RESIDUE")
            assert (again.status_code, again.json()["state"]) == (200, "ARCHIVED")


async def test_a_failed_call_leaves_only_its_marker_and_its_replay_archives_it(
    client: AsyncClient, run_worker, ai: ScriptedAI, redis: Redis, settings: Settings
):
    ai.fail("sentiment", *(TransientAIError("busy") for _ in range(settings.ai_max_attempts)))
    await send_all(client, "failing", [0, 1, 2])
    await complete(client, "failing")
    await run_worker()
    assert (await status(client, "failing"))["state"] == "FAILED"
    only_the_marker(await settled(redis, "failing"), "failing", settings)

    # Nothing the replay needs was in Redis: PostgreSQL holds the call's audio and transcript.
    assert (await client.post("/v1/calls/failing/retry")).status_code == 202
    await run_worker()

    call = await status(client, "failing")
    assert (call["state"], call["packets_received"]) == ("ARCHIVED", 3)
    assert call["transcript"]
    only_the_marker(await settled(redis, "failing"), "failing", settings)


async def test_a_late_packet_after_the_release_is_refused_not_a_new_call(
    client: AsyncClient, run_worker, redis: Redis, settings: Settings
):
    await send_all(client, "ended", [0, 1])
    await complete(client, "ended")
    await run_worker()

    late = await send(client, "ended", 2, "late")

    assert late.status_code == 409
    assert (await status(client, "ended"))["packets_received"] == 2
    only_the_marker(await keys_naming(redis, "ended"), "ended", settings)
    assert all([await redis.zscore(s.idle, "ended") is None for s in ALL_SHARDS])
