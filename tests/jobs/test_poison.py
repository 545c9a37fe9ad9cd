"""Calls whose data PostgreSQL refuses (poison calls): FAILED for good with a reason that names the
problem but not the data, keys released, the job not retried, the reaper not interested; while an
outage is still waited for. Real Redis, PostgreSQL and arq; the refusals are PostgreSQL's own."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import asyncpg
import pytest
from arq.constants import default_queue_name
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from db.intake import CallIntake
from db.keys import call_keys
from db.outages import is_outage, is_postgres_outage, postgres_refusal
from db.packets import NewPacket
from db.record import HASH_FIELDS
from db.states import CallState, can_transition
from jobs.ai import Sentiment, Spoken
from jobs.resources import WorkerResources
from jobs.sweep import recover_orphaned_calls
from tests.conftest import FEED
from tests.factories import complete, rows, scalar, send_all, status
from tests.fakes import ScriptedAI

SECRET = "secret-payload"  # a packet's data: must never show in a reason


def quick_lease(res: WorkerResources) -> WorkerResources:
    return dataclasses.replace(res, settings=res.settings.model_copy(update={"lease_ttl_s": 0.2}))


async def store_directly(res: WorkerResources, call_id: str, *data: str) -> None:
    """Packets written with the ingest script itself, past the API (which refuses a NUL)."""
    packets = [NewPacket(n, 1_700_000_000.0 + n * 0.02, d) for n, d in enumerate(data)]
    await CallIntake(res.redis, feed=FEED).append(call_id, packets)


async def moves(engine: AsyncEngine, call_id: str) -> list[Any]:
    return await rows(
        engine,
        "SELECT from_state, to_state, reason FROM state_transition WHERE call_id=:c ORDER BY id",
        c=call_id,
    )


async def assert_finished_for_good(res: WorkerResources, call_id: str) -> None:
    """Released like any finished call, and nothing will run it again by itself."""
    keys = call_keys(call_id)
    # At once: PostgreSQL holds all of it; only the done marker stays, to refuse late packets.
    sent = (keys.packets, keys.runs, keys.runs_outbound, keys.meta, keys.metadata)
    assert await res.redis.exists(*sent, keys.failures) == 0
    assert await res.redis.ttl(keys.done) > 0
    assert await res.redis.zscore(call_keys(call_id).shard.pending, call_id) is None
    assert await res.redis.zscore(call_keys(call_id).shard.unflushed, call_id) is None
    assert await res.redis.zcard(default_queue_name) == 0
    await asyncio.sleep(0.3)  # past the reaper's grace (the lease TTL)
    assert await recover_orphaned_calls(res) == []
    assert await res.redis.zcard(default_queue_name) == 0


async def stored_packets(engine: AsyncEngine, call_id: str) -> int:
    sql = f"SELECT coalesce(sum(packets), 0) FROM call_segment WHERE call_id='{call_id}'"
    return int(await scalar(engine, sql))


def assert_says_nothing_of_the_data(reason: str) -> None:
    assert SECRET not in reason
    assert "\x00" not in reason
    assert "[SQL" not in reason
    assert "parameters" not in reason


async def test_text_postgres_refuses_is_stored_as_audio_bytes_and_refused_in_the_transcript(
    client: AsyncClient,
    run_worker,
    worker_resources: WorkerResources,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG)
    res = quick_lease(worker_resources)
    await store_directly(res, "poison", "hello", f"{SECRET}\x00", "bye")
    await complete(client, "poison")

    worker = await run_worker(res)

    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (1, 0, 0)
    call = await status(client, "poison")
    assert call["state"] == "FAILED"
    reason = call["last_error"]
    # The packets' data is stored as bytes (a segment), which PostgreSQL takes whatever they
    # hold; the transcript that repeats it is text, and is refused.
    assert "refused a write of the call's AI results" in reason
    assert "NUL" in reason
    assert "SQLSTATE 22021" in reason
    assert_says_nothing_of_the_data(reason)
    assert call["packets_received"] == 3  # what Redis knew
    assert call["finished_at"] is not None
    assert await stored_packets(engine, "poison") == 3
    path = await moves(engine, "poison")
    assert [(m.from_state, m.to_state) for m in path] == [
        (None, "IN_PROGRESS"),
        ("IN_PROGRESS", "COMPLETED"),
        ("COMPLETED", "PROCESSING_AI"),
        ("PROCESSING_AI", "FAILED"),
    ]
    assert all(
        can_transition(CallState(m.from_state) if m.from_state else None, CallState(m.to_state))
        for m in path
    )
    assert path[-1].reason == reason
    await assert_finished_for_good(res, "poison")
    assert SECRET not in caplog.text


async def test_the_workers_engine_keeps_parameters_out_of_its_errors(
    worker_resources: WorkerResources,
):
    with pytest.raises(DBAPIError) as refused:
        async with worker_resources.engine.connect() as conn:
            await conn.execute(text("SELECT CAST(:d AS text)"), {"d": f"{SECRET}\x00"})

    assert SECRET not in str(refused.value)
    assert "hidden due to hide_parameters" in str(refused.value)


async def test_a_long_call_with_text_postgres_refuses_keeps_every_packet_and_fails(
    client: AsyncClient, run_worker, worker_resources: WorkerResources, engine: AsyncEngine
):
    res = quick_lease(worker_resources)
    data = [f"w{n}" for n in range(2500)]  # two flush pages: one transaction for both
    data[2300] = f"{SECRET}\x00"
    await store_directly(res, "long-poison", *data)
    await complete(client, "long-poison")

    await run_worker(res)

    assert (await status(client, "long-poison"))["state"] == "FAILED"
    assert await stored_packets(engine, "long-poison") == 2500
    await assert_finished_for_good(res, "long-poison")


class RefusedSentiment(ScriptedAI):
    """A provider whose sentiment label holds a NUL: PostgreSQL refuses the final write."""

    async def analyse_sentiment(self, call_id: str, transcript: str) -> Sentiment:
        await super().analyse_sentiment(call_id, transcript)
        return Sentiment(label=f"positive{SECRET}\x00", score=0.5)


async def test_a_final_write_postgres_refuses_ends_failed_for_good(
    client: AsyncClient, run_worker, worker_resources: WorkerResources, engine: AsyncEngine
):
    res = dataclasses.replace(quick_lease(worker_resources), ai=RefusedSentiment())
    await send_all(client, "bad-label", [0, 1])
    await complete(client, "bad-label")

    worker = await run_worker(res)

    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (1, 0, 0)
    call = await status(client, "bad-label")
    assert call["state"] == "FAILED"
    reason = call["last_error"]
    assert "refused a write of the call's AI results" in reason
    assert "SQLSTATE 22021" in reason
    assert_says_nothing_of_the_data(reason)
    assert call["transcript"] == "chunk-0 chunk-1"  # kept as soon as it was known
    assert call["sentiment"] is None
    assert (
        await scalar(
            engine, "SELECT coalesce(sum(packets), 0) FROM call_segment WHERE call_id='bad-label'"
        )
        == 2
    )
    path = await moves(engine, "bad-label")
    assert [m.to_state for m in path][-2:] == ["PROCESSING_AI", "FAILED"]
    assert path[-1].reason == reason
    await assert_finished_for_good(res, "bad-label")


class RefusedTranscript(ScriptedAI):
    async def transcribe_segments(
        self, call_id: str, audio: Any, *, words: bool = False
    ) -> list[Spoken]:
        await super().transcribe_segments(call_id, audio)
        return [Spoken(0.0, 1.0, f"{SECRET}\x00")]


async def test_a_refused_transcript_ends_failed_for_good(
    client: AsyncClient, run_worker, worker_resources: WorkerResources
):
    res = dataclasses.replace(quick_lease(worker_resources), ai=RefusedTranscript())
    await send_all(client, "bad-transcript", [0])
    await complete(client, "bad-transcript")

    await run_worker(res)

    call = await status(client, "bad-transcript")
    assert call["state"] == "FAILED"
    assert call["transcript"] is None
    assert_says_nothing_of_the_data(call["last_error"])
    await assert_finished_for_good(res, "bad-transcript")


async def test_a_counter_out_of_its_columns_range_fails_the_call_with_the_counter_capped(
    client: AsyncClient, run_worker, worker_resources: WorkerResources, engine: AsyncEngine
):
    res = quick_lease(worker_resources)
    await store_directly(res, "huge", "a")
    await complete(client, "huge")
    # More duplicates than an `integer` column holds: refused by the flush, and by the row of
    # the refusal too, until the counter is capped.
    field = HASH_FIELDS["duplicate_packets"]
    await res.redis.hset(call_keys("huge").meta, field, str(2**40))  # type: ignore[misc]

    await run_worker(res)

    reason = await scalar(engine, "SELECT last_error FROM call WHERE call_id='huge'")
    assert await scalar(engine, "SELECT state FROM call WHERE call_id='huge'") == "FAILED"
    assert "a number out of range for its column" in reason
    assert "its record was refused too" in reason
    assert str(2**40) not in reason
    assert await scalar(engine, "SELECT duplicate_packets FROM call WHERE call_id='huge'") == (
        2**31 - 1
    )
    await assert_finished_for_good(res, "huge")


async def test_refused_metadata_keeps_the_row_without_it_and_a_replay_finishes_the_call(
    client: AsyncClient, run_worker, worker_resources: WorkerResources, engine: AsyncEngine
):
    res = quick_lease(worker_resources)
    await CallIntake(res.redis, feed=FEED).open_call("bad-start", {"callSid": f"{SECRET}\x00"}, 600)
    await store_directly(res, "bad-start", "hello", "thanks")
    await complete(client, "bad-start")

    await run_worker(res)

    call = await status(client, "bad-start")
    assert call["state"] == "FAILED"
    assert call["metadata"] is None
    assert "kept without metadata" in call["last_error"]
    assert_says_nothing_of_the_data(call["last_error"])
    assert await stored_packets(engine, "bad-start") == 2  # the audio went first, in segments
    await assert_finished_for_good(res, "bad-start")

    # The packets themselves were fine: a replay reads them from PostgreSQL and finishes.
    assert (await client.post("/v1/calls/bad-start/retry")).status_code == 202
    await run_worker(res)

    call = await status(client, "bad-start")
    assert call["state"] == "ARCHIVED"
    assert call["transcript"] == "hello thanks"
    assert await stored_packets(engine, "bad-start") == 2


async def test_a_replayed_poison_call_fails_again_with_or_without_its_redis_keys(
    client: AsyncClient, run_worker, worker_resources: WorkerResources, engine: AsyncEngine
):
    res = quick_lease(worker_resources)
    await store_directly(res, "again", f"{SECRET}\x00")
    await complete(client, "again")
    await run_worker(res)
    first = (await status(client, "again"))["last_error"]

    assert (await client.post("/v1/calls/again/retry")).status_code == 202
    await run_worker(res)

    call = await status(client, "again")
    assert (call["state"], call["last_error"]) == ("FAILED", first)
    path = [(m.from_state, m.to_state) for m in await moves(engine, "again")]
    assert path[-4:] == [
        ("PROCESSING_AI", "FAILED"),
        ("FAILED", "COMPLETED"),
        ("COMPLETED", "PROCESSING_AI"),
        ("PROCESSING_AI", "FAILED"),
    ]
    await assert_finished_for_good(res, "again")

    # Its keys are gone meanwhile: its audio is in PostgreSQL, and fails the same way again.
    await res.redis.delete(*call_keys("again").all)
    assert (await client.post("/v1/calls/again/retry")).status_code == 202
    await run_worker(res)

    call = await status(client, "again")
    assert (call["state"], call["last_error"]) == ("FAILED", first)
    assert call["transcript"] is None


# --- what counts as an outage, and what as a refusal (no server needed) ---------------------


def wrapped(error: Exception) -> DBAPIError:
    """An asyncpg error as SQLAlchemy's asyncpg dialect raises it: wrapped twice."""
    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError("the dialect's error") from inner
    except RuntimeError as dialect_error:
        return DBAPIError("INSERT ...", {"d": SECRET}, dialect_error, hide_parameters=True)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"),
        ConnectionResetError("reset"),
    ],
)
def test_errors_that_say_not_now_are_outages_even_wrapped(error: Exception):
    assert is_postgres_outage(wrapped(error))
    assert is_outage(wrapped(error))
    assert postgres_refusal(wrapped(error)) is None


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (asyncpg.exceptions.CharacterNotInRepertoireError(f"0x00 {SECRET}"), "SQLSTATE 22021"),
        (asyncpg.exceptions.NumericValueOutOfRangeError(f"{SECRET} out of range"), "22003"),
        (asyncpg.exceptions.UntranslatableCharacterError(SECRET), "\\u0000 in JSON"),
        (asyncpg.exceptions.UniqueViolationError(f"Key (x)=({SECRET})"), "constraint"),
        (asyncpg.exceptions._base.DataError(f"invalid input for $1: {SECRET}"), "driver"),
    ],
)
def test_refusals_are_named_without_their_message(error: Exception, words: str):
    refused = postgres_refusal(wrapped(error))
    assert refused is not None
    assert words in refused
    assert SECRET not in refused
    assert not is_outage(wrapped(error))


def test_what_is_no_database_error_is_no_refusal():
    assert postgres_refusal(ValueError("x")) is None
    assert postgres_refusal(IntegrityError("INSERT", {}, ValueError("dup"))) is not None
