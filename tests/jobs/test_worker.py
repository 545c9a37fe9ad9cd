"""The worker against real Redis, PostgreSQL and arq: from packets to ARCHIVED or FAILED."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from db.keys import call_keys
from jobs.ai import PermanentAIError, TransientAIError
from jobs.process import process_call
from jobs.resources import WorkerResources
from tests.factories import complete, packet, rows, scalar, send, send_all, status
from tests.fakes import ScriptedAI

# Ingestion, completion, the worker and recovery hold on a Redis Cluster as on one Redis.
pytestmark = pytest.mark.both_topologies


async def test_a_call_goes_from_packets_to_archived_with_a_real_worker(
    client: AsyncClient, run_worker, engine: AsyncEngine, worker_resources: WorkerResources
):
    words = ["thanks", "the", "problem", "is", "resolved", "great"]
    for seq, word in [(0, words[0]), (2, words[2]), (1, words[1]), (2, words[2])]:
        await send(client, "call-1", seq, word)
    for seq in range(3, 6):
        await send(client, "call-1", seq, words[seq])
    await complete(client, "call-1")

    await run_worker()

    call = await status(client, "call-1")
    assert call["state"] == "ARCHIVED"
    assert call["transcript"] == "thanks the problem is resolved great"
    assert call["sentiment"] == {"label": "positive", "score": 0.5}
    assert call["packets_received"] == 6
    assert call["duplicate_packets"] == 1
    assert call["out_of_order_packets"] == 1
    assert call["ai_attempts"] == 2
    assert call["finished_at"] is not None
    stored = await rows(
        engine,
        "SELECT unnest(sequences) AS sequence FROM call_segment WHERE call_id='call-1' ORDER BY 1",
    )
    assert [r.sequence for r in stored] == [0, 1, 2, 3, 4, 5]
    moves = await rows(
        engine,
        "SELECT from_state, to_state FROM state_transition WHERE call_id='call-1' ORDER BY id",
    )
    assert [(m.from_state, m.to_state) for m in moves] == [
        (None, "IN_PROGRESS"),
        ("IN_PROGRESS", "COMPLETED"),
        ("COMPLETED", "PROCESSING_AI"),
        ("PROCESSING_AI", "ARCHIVED"),
    ]
    redis = worker_resources.redis
    # Redis is a buffer: what the call sent left it with the release (tests/jobs/test_residue.py).
    assert await redis.exists(call_keys("call-1").packets, call_keys("call-1").meta) == 0
    assert await redis.zscore(call_keys("call-1").shard.pending, "call-1") is None


async def test_missing_sequences_are_kept_when_the_call_is_flushed(client: AsyncClient, run_worker):
    await send_all(client, "gappy", [10, 11, 14, 13, 18])
    await complete(client, "gappy")

    await run_worker()

    call = await status(client, "gappy")
    assert call["state"] == "ARCHIVED"
    assert call["missing_sequences"] == [12, 15, 16, 17]
    assert (call["first_sequence"], call["last_sequence"]) == (10, 18)


async def test_transient_ai_failures_are_retried_and_every_attempt_recorded(
    client: AsyncClient, run_worker, ai: ScriptedAI, engine: AsyncEngine
):
    ai.fail("transcription", TransientAIError("503"), TransientAIError("503"))
    ai.fail("sentiment", TransientAIError("502"))
    await send_all(client, "flaky", [0, 1])
    await complete(client, "flaky")

    await run_worker()

    call = await status(client, "flaky")
    assert call["state"] == "ARCHIVED"
    assert call["ai_attempts"] == 5
    history = (await client.get("/v1/calls/flaky/history")).json()
    attempts = history["attempts"]
    assert [(a["step"], a["attempt"], a["outcome"]) for a in attempts] == [
        ("transcription", 1, "error"),
        ("transcription", 2, "error"),
        ("transcription", 3, "ok"),
        ("sentiment", 1, "error"),
        ("sentiment", 2, "ok"),
    ]
    assert attempts[0]["error"] == "503"
    assert [t["to_state"] for t in history["transitions"]] == [
        "IN_PROGRESS",
        "COMPLETED",
        "PROCESSING_AI",
        "ARCHIVED",
    ]


async def test_ai_failing_for_good_ends_in_failed_with_the_reason(
    client: AsyncClient, run_worker, ai: ScriptedAI, engine: AsyncEngine
):
    ai.fail("transcription", *[TransientAIError("provider down")] * 5)
    await send_all(client, "doomed", [0])
    await complete(client, "doomed")

    await run_worker()

    call = await status(client, "doomed")
    assert call["state"] == "FAILED"
    assert "transcription failed after 5 attempts" in str(call["last_error"])
    assert "provider down" in str(call["last_error"])
    assert call["ai_attempts"] == 5
    assert ai.count("sentiment") == 0
    last = await scalar(
        engine, "SELECT reason FROM state_transition WHERE call_id='doomed' ORDER BY id DESC"
    )
    assert "transcription failed after 5 attempts" in last


async def test_a_permanent_ai_error_fails_the_call_without_retrying(
    client: AsyncClient, run_worker, ai: ScriptedAI
):
    ai.fail("transcription", PermanentAIError("400 unsupported audio"))
    await send_all(client, "bad-audio", [0])
    await complete(client, "bad-audio")

    await run_worker()

    call = await status(client, "bad-audio")
    assert call["state"] == "FAILED"
    assert call["ai_attempts"] == 1
    assert "permanently" in str(call["last_error"])


async def test_transcription_is_not_redone_when_sentiment_failed_in_an_earlier_run(
    client: AsyncClient, run_worker, ai: ScriptedAI, settings, worker_resources
):
    # The first run exhausts sentiment's budget of 2; the replay finds the transcript stored.
    tight = dataclasses.replace(
        worker_resources, settings=settings.model_copy(update={"ai_max_attempts": 2})
    )
    ai.fail("sentiment", TransientAIError("x"), TransientAIError("y"))
    await send_all(client, "half", [0])
    await complete(client, "half")
    await run_worker(tight)
    assert (await status(client, "half"))["state"] == "FAILED"

    assert (await client.post("/v1/calls/half/retry")).status_code == 202
    await run_worker(tight)

    call = await status(client, "half")
    assert call["state"] == "ARCHIVED"
    assert ai.count("transcription") == 1
    assert ai.count("sentiment") == 3


async def test_a_job_run_twice_leaves_one_result(
    client: AsyncClient, worker_resources: WorkerResources, engine: AsyncEngine
):
    await send_all(client, "twice", [0, 1, 2])
    await complete(client, "twice")

    first, second = await asyncio.gather(
        process_call(worker_resources, "twice"), process_call(worker_resources, "twice")
    )
    third = await process_call(worker_resources, "twice")

    assert "ARCHIVED" in (first, second)
    assert third == "ARCHIVED"
    assert (
        await scalar(
            engine, "SELECT coalesce(sum(packets), 0) FROM call_segment WHERE call_id='twice'"
        )
        == 3
    )
    archived = await scalar(
        engine,
        "SELECT count(*) FROM state_transition WHERE call_id='twice' AND to_state='ARCHIVED'",
    )
    assert archived == 1
    assert (await status(client, "twice"))["state"] == "ARCHIVED"


async def test_idle_calls_complete_by_themselves_through_the_sweep(
    client: AsyncClient, settings, ai: ScriptedAI, run_worker
):
    from jobs.resources import make_resources
    from jobs.sweep import complete_idle_calls

    # 2 s: the two sweeps below each come right after a packet, and a loaded machine can stall
    # a test for a few 100 ms between two steps (0.3 s here once failed that way).
    quick = make_resources(settings.model_copy(update={"call_idle_timeout_s": 2.0}), ai=ai)
    try:
        await send_all(client, "quiet", [0, 1])
        await send_all(client, "chatty", [0])
        assert await complete_idle_calls(quick) == []
        await asyncio.sleep(2.1)
        await send(client, "chatty", 1)

        assert await complete_idle_calls(quick) == ["quiet"]
        assert await quick.redis.zscore(call_keys("quiet").shard.idle, "quiet") is None
        await run_worker(quick)
    finally:
        await quick.close()

    quiet = await status(client, "quiet")
    assert quiet["state"] == "ARCHIVED"
    assert quiet["completion_reason"] == "idle"
    assert (await status(client, "chatty"))["state"] == "IN_PROGRESS"
    late = await send(client, "quiet", 2)
    assert late.status_code == 409


async def test_the_status_of_a_call_stays_visible_while_it_is_processed(
    client: AsyncClient, run_worker
):
    await send_all(client, "visible", [0, 1])
    started = time.time()
    await complete(client, "visible")
    assert (await status(client, "visible"))["state"] == "COMPLETED"

    await run_worker()

    call = await status(client, "visible")
    assert call["state"] == "ARCHIVED"
    assert call["created_at"] <= call["completed_at"] <= call["finished_at"]
    assert time.time() - started < 30


async def test_a_long_call_is_flushed_page_by_page_with_every_packet_and_gap(
    client: AsyncClient, run_worker, engine: AsyncEngine
):
    sequences = [s for s in range(4600) if s not in (1234, 4001)]
    for start in range(0, len(sequences), 500):
        chunk = [packet(s) for s in sequences[start : start + 500]]
        response = await client.post("/v1/call/stream/long/batch", json={"packets": chunk})
        assert response.status_code == 202
    await complete(client, "long")

    await run_worker()

    call = await status(client, "long")
    assert call["state"] == "ARCHIVED"
    assert call["missing_sequences"] == [1234, 4001]
    assert (
        await scalar(
            engine, "SELECT coalesce(sum(packets), 0) FROM call_segment WHERE call_id='long'"
        )
        == 4598
    )


async def test_a_call_longer_than_a_flush_page_is_flushed_whole_and_transcribed_in_order(
    client: AsyncClient, run_worker, engine: AsyncEngine, ai: ScriptedAI
):
    total = 4500  # three segments' worth of a one-track call (SEGMENT_SECONDS = 30 s: 1,500)
    order = list(range(total))
    order[100], order[101] = order[101], order[100]  # one reordered pair
    for start in range(0, total, 500):
        batch = [packet(s, f"w{s}") for s in order[start : start + 500]]
        answer = await client.post("/v1/call/stream/long/batch", json={"packets": batch})
        assert answer.status_code == 202
    await complete(client, "long")

    await run_worker()

    call = await status(client, "long")
    assert call["state"] == "ARCHIVED"
    assert call["packets_received"] == total
    assert (
        await scalar(
            engine, "SELECT coalesce(sum(packets), 0) FROM call_segment WHERE call_id='long'"
        )
        == total
    )
    assert call["transcript"].split() == [f"w{s}" for s in range(total)]
