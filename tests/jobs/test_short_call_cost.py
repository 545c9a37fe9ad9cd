"""What the back half of a short call costs the worker (docs/architecture.md's cost model), and
that its short cuts lose nothing when a run dies: a run that stored the call's first segment and
made its row (jobs/flushing.py's Held.heads) skips the reads and the lock only it may skip."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest
from redis.asyncio.connection import AbstractConnection
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from db import worker_writes
from db.flush import FlushSource
from db.keys import call_keys
from db.packets import NewPacket
from jobs.process import process_call
from jobs.resources import WorkerResources
from jobs.segments import flush_segment
from tests.factories import rows, scalar

FRAME = "A" * 216  # 162 bytes of μ-law: bench/backhalf.py's packets
HANDSHAKE = {"CLIENT", "HELLO", "AUTH", "SELECT"}  # what redis-py sends as it connects


class Died(Exception):
    pass


async def short_call(res: WorkerResources, call_id: str, packets: int = 10) -> None:
    frames = [NewPacket(n, n * 0.02, FRAME) for n in range(packets)]
    await res.ingestion.append(call_id, frames)
    await res.ingestion.complete(call_id)


async def a_run_that_dies(
    res: WorkerResources, call_id: str, monkeypatch: pytest.MonkeyPatch, owner: Any, step: str
) -> None:
    """process_call of the call, dying (Died) where `owner.step` would have run."""

    async def died(*_: Any, **__: Any) -> Any:
        raise Died

    with monkeypatch.context() as patch:
        patch.setattr(owner, step, died)
        with pytest.raises(Died):
            await process_call(res, call_id)


@contextmanager
def counted(
    res: WorkerResources, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, list[str]]]:
    """The SQL statements the worker's pool runs (through SQLAlchemy, or straight to asyncpg:
    db/direct.py) and the Redis round trips (each one send of one command or one pipeline) any
    client makes, by their first command."""
    seen: dict[str, list[str]] = {"sql": [], "redis": []}

    def statement(*args: Any) -> None:
        seen["sql"].append(" ".join(args[2].split()))

    send = AbstractConnection.send_packed_command
    fetchval = asyncpg.Connection.fetchval

    async def direct(conn: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
        seen["sql"].append(" ".join(query.split()))
        return await fetchval(conn, query, *args, **kw)

    async def sent(conn: AbstractConnection, command: Any, check_health: bool = True) -> None:
        parts = [command] if isinstance(command, bytes | bytearray) else list(command)
        lines = b"".join(bytes(p) for p in parts).split(b"\r\n")
        name = lines[2].decode()  # *<n>, $<len>, then the first command's name
        # A connection opened meanwhile says hello (CLIENT SETINFO): the pool's, not the call's.
        if name not in HANDSHAKE:
            seen["redis"].append(name)
        await send(conn, command, check_health)

    event.listen(res.engine.sync_engine, "before_cursor_execute", statement)
    monkeypatch.setattr(AbstractConnection, "send_packed_command", sent)
    monkeypatch.setattr(asyncpg.Connection, "fetchval", direct)
    try:
        yield seen
    finally:
        monkeypatch.undo()
        event.remove(res.engine.sync_engine, "before_cursor_execute", statement)


async def test_a_short_calls_back_half_costs_five_statements_and_eight_round_trips_of_ours(
    worker_resources: WorkerResources, monkeypatch: pytest.MonkeyPatch
):
    res = worker_resources
    await short_call(res, "warm")
    await short_call(res, "warm-too")
    await short_call(res, "short")
    # Connections opened (two of each pool: an AI slot's return may overlap the next command),
    # scripts loaded.
    warm = await asyncio.gather(process_call(res, "warm"), process_call(res, "warm-too"))
    assert list(warm) == ["ARCHIVED", "ARCHIVED"]
    await res.ai_limiter.settle()

    with counted(res, monkeypatch) as seen:
        assert await process_call(res, "short") == "ARCHIVED"
        await res.ai_limiter.settle()

    # The segment, the row (claimed), the window with its utterances, the transcript, the final
    # state: no segment's entries had left the stream, so the segment is planned as the first
    # without a read, and the recording's heads are the segment's, known.
    assert len(seen["sql"]) == 5
    # The lease with the tail, the tail's trim with the row's news, a slot and its return for
    # each AI step, the utterances and the transcript's attempt told, the release.
    assert seen["redis"] == [
        "SET", "EVALSHA", "EVALSHA", "ZREM", "XADD", "EVALSHA", "ZREM", "EVALSHA",
    ]  # fmt: skip


@pytest.mark.parametrize("after", [1, 0], ids=["more-at-its-end", "all-flushed-live"])
async def test_a_call_flushed_live_before_its_end_takes_the_lock_and_reads_its_windows(
    worker_resources: WorkerResources,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    after: int,
):
    res = worker_resources
    frames = [NewPacket(n, n * 0.02, FRAME) for n in range(10)]
    await res.ingestion.append("live", frames)
    await flush_segment(res, "live")  # a live segment: a live pass may have run
    await res.ingestion.append("live", [NewPacket(10 + n, 0.2, FRAME) for n in range(after)])
    await res.ingestion.complete("live")

    with counted(res, monkeypatch) as seen:
        assert await process_call(res, "live") == "ARCHIVED"

    assert seen["redis"].count("SET") == 2  # the lease, and the transcription lock
    reads = [s.rsplit(" FROM ", 1)[1].split()[0] for s in seen["sql"] if s.startswith("SELECT")]
    # Where the segments end (the plan, if the tail held any entry); the heads; where the
    # tracks are transcribed to; the utterances.
    planned = ["call_segment"] if after else []
    assert reads == [*planned, "call_segment", "transcript_window", "utterance"]
    call = await rows(engine, "SELECT transcript, conversation FROM call WHERE call_id = 'live'")
    assert call[0].transcript
    assert call[0].conversation is not None


async def test_a_run_that_died_after_the_first_segment_leaves_a_rerun_that_reads_what_it_needs(
    worker_resources: WorkerResources, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
):
    res = worker_resources
    await short_call(res, "dies")
    # Its window stored, no transcript.
    await a_run_that_dies(res, "dies", monkeypatch, worker_writes, "write_progress")
    assert await scalar(engine, "SELECT count(*) FROM transcript_window") == 1

    assert await process_call(res, "dies") == "ARCHIVED"

    call = await rows(engine, "SELECT state, transcript FROM call WHERE call_id = 'dies'")
    assert call[0].state == "ARCHIVED"
    assert call[0].transcript  # the stored window's utterances, read by the re-run
    assert await scalar(engine, "SELECT count(*) FROM call_segment") == 1
    assert await scalar(engine, "SELECT count(*) FROM transcript_window") == 1
    assert await scalar(engine, "SELECT count(*) FROM utterance") == 1


async def test_a_run_that_died_before_its_trim_leaves_a_rerun_that_stores_the_segment_once(
    worker_resources: WorkerResources, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
):
    # The re-run finds no trim in the call's hash and plans the first segment without a read:
    # the stored one collides with it, and the next plan reads where the segments end.
    res = worker_resources
    await short_call(res, "untrimmed")
    await a_run_that_dies(res, "untrimmed", monkeypatch, FlushSource, "segment_done")
    assert await scalar(engine, "SELECT count(*) FROM call_segment") == 1

    assert await process_call(res, "untrimmed") == "ARCHIVED"

    assert await scalar(engine, "SELECT count(*) FROM call_segment") == 1
    assert await scalar(engine, "SELECT sum(packets) FROM call_segment") == 10
    assert await res.redis.xlen(call_keys("untrimmed").packets) == 0
