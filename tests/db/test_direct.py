"""db/direct.py against the real PostgreSQL: a statement sent to asyncpg itself answers as
SQLAlchemy's would, stays inside a transaction it is given, and a connection that broke under it
is not handed out again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from db.direct import Direct
from db.engine import autocommit
from db.outages import is_postgres_outage
from settings import Settings
from tests.factories import scalar

DOC = Direct(
    text("SELECT CAST(:doc AS jsonb) ->> 'said' || :tail").bindparams(bindparam("doc", type_=JSONB))
)
MARK = Direct(text("INSERT INTO erasure_mark_test (n) VALUES (:n) RETURNING n"))


async def test_a_direct_statement_answers_as_sqlalchemy_does_with_its_parameters_processed(
    engine: AsyncEngine,
):
    async with autocommit(engine).connect() as conn:
        direct = await DOC.scalar(conn, {"doc": {"said": "hello"}, "tail": " there"})
        through = await conn.scalar(DOC.statement, {"doc": {"said": "hello"}, "tail": " there"})
    assert direct == through == "hello there"


async def test_a_direct_statement_in_a_transaction_is_rolled_back_with_it(engine: AsyncEngine):
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS erasure_mark_test (n int)"))
    try:
        async with engine.connect() as conn:
            trans = await conn.begin()
            assert await MARK.scalar(conn, {"n": 7}) == 7
            await trans.rollback()
        assert await scalar(engine, "SELECT count(*) FROM erasure_mark_test") == 0
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE erasure_mark_test"))


async def test_a_connection_that_broke_under_a_direct_statement_is_not_handed_out_again(
    settings: Settings, engine: AsyncEngine
):
    # One connection in the pool, no pre-ping (the worker's engine): the next checkout would get
    # the broken one again if it were not invalidated.
    own = create_async_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        async with autocommit(own).connect() as conn:
            pid = await DOC.scalar(conn, {"doc": {"said": "x"}, "tail": ""}) and await conn.scalar(
                text("SELECT pg_backend_pid()")
            )
            async with engine.connect() as killer:
                await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)) as lost:
                await DOC.scalar(conn, {"doc": {"said": "x"}, "tail": ""})
            assert is_postgres_outage(lost.value)

        async with autocommit(own).connect() as conn:
            assert await DOC.scalar(conn, {"doc": {"said": "back"}, "tail": ""}) == "back"
    finally:
        await own.dispose()


PID = Direct(text("SELECT pg_backend_pid()"))
SLEEP = Direct(text("SELECT pg_sleep(:s)::text"))


async def test_a_direct_statement_on_the_pool_commits_by_itself_and_gives_its_connection_back(
    settings: Settings, engine: AsyncEngine
):
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS erasure_mark_test (n int)"))
    own = create_async_engine(settings.database_url, pool_size=1, max_overflow=0, pool_timeout=2)
    try:
        assert [await MARK.scalar(own, {"n": n}) for n in range(3)] == [0, 1, 2]  # one connection
        assert await scalar(engine, "SELECT count(*) FROM erasure_mark_test") == 3
    finally:
        await own.dispose()
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE erasure_mark_test"))


async def test_a_pool_connection_that_broke_under_a_direct_statement_is_replaced(
    settings: Settings, engine: AsyncEngine
):
    own = create_async_engine(settings.database_url, pool_size=1, max_overflow=0, pool_timeout=2)
    try:
        pid = await PID.scalar(own, {})
        async with engine.connect() as killer:
            await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)) as lost:
            await DOC.scalar(own, {"doc": {"said": "x"}, "tail": ""})
        assert is_postgres_outage(lost.value)

        assert await PID.scalar(own, {}) != pid  # a new connection, not the broken one
    finally:
        await own.dispose()


async def test_a_pool_connection_whose_statement_was_cancelled_is_closed_not_given_back(
    settings: Settings,
):
    own = create_async_engine(settings.database_url, pool_size=1, max_overflow=0, pool_timeout=2)
    try:
        pid = await PID.scalar(own, {})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(SLEEP.scalar(own, {"s": 5}), 0.2)

        assert await PID.scalar(own, {}) != pid
        assert await SLEEP.scalar(own, {"s": 0}) == ""
    finally:
        await own.dispose()


# Statements of one kind on the pool go together (group commit).
NOTE = Direct(text("INSERT INTO direct_batch_test (n) SELECT :n FROM pg_sleep(:s) RETURNING n"))


@pytest.fixture
async def notes(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """A table of notes (n >= 0), and an engine of one pooled connection to write them."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE direct_batch_test (n int CHECK (n >= 0))"))
    own = create_async_engine(engine.url, pool_size=1, max_overflow=0, pool_timeout=5)
    try:
        yield own
    finally:
        await own.dispose()
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE direct_batch_test"))


async def _stored(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT n FROM direct_batch_test ORDER BY n"))
        return [row.n for row in rows]


class _Trips:
    """asyncpg's round trips of direct statements, counted by the number of statements each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        fetchval, fetchmany = asyncpg.Connection.fetchval, asyncpg.Connection.fetchmany

        async def one(conn: asyncpg.Connection, sql: str, *args: Any) -> Any:
            self.sizes.append(1)
            return await fetchval(conn, sql, *args)

        async def many(conn: asyncpg.Connection, sql: str, args: list[Any]) -> Any:
            self.sizes.append(len(args))
            return await fetchmany(conn, sql, args)

        monkeypatch.setattr(asyncpg.Connection, "fetchval", one)
        monkeypatch.setattr(asyncpg.Connection, "fetchmany", many)


async def test_statements_of_one_kind_sent_at_once_go_in_one_round_trip_each_with_its_answer(
    notes: AsyncEngine, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = _Trips(monkeypatch)
    answers = await asyncio.gather(*(NOTE.scalar(notes, {"n": n, "s": 0}) for n in range(20)))
    assert answers == list(range(20))
    assert trips.sizes == [20]
    assert await _stored(engine) == list(range(20))


async def test_statements_sent_while_one_is_on_its_way_wait_and_go_together(
    notes: AsyncEngine, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = _Trips(monkeypatch)
    first = asyncio.create_task(NOTE.scalar(notes, {"n": 0, "s": 0.3}))
    await asyncio.sleep(0.1)  # on its way, alone
    rest = [asyncio.create_task(NOTE.scalar(notes, {"n": n, "s": 0})) for n in range(1, 6)]
    await asyncio.sleep(0.05)
    rest[1].cancel()  # its caller gave up before it was sent: it is never sent
    assert await first == 0
    assert [await t for t in rest if t is not rest[1]] == [1, 3, 4, 5]
    assert trips.sizes == [1, 4]
    assert await _stored(engine) == [0, 1, 3, 4, 5]


async def test_a_statement_postgres_refuses_fails_alone_and_the_rest_of_its_batch_is_stored(
    notes: AsyncEngine, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = _Trips(monkeypatch)
    answers = await asyncio.gather(
        *(NOTE.scalar(notes, {"n": n, "s": 0}) for n in (0, 1, -1, 2)), return_exceptions=True
    )
    assert answers[:2] == [0, 1]
    assert answers[3] == 2
    assert isinstance(answers[2], asyncpg.CheckViolationError)
    assert trips.sizes == [4, 1, 1, 1, 1]  # the batch rolled back, then each alone
    assert await _stored(engine) == [0, 1, 2]


async def test_a_batch_goes_on_for_the_callers_still_waiting_when_one_gives_up(
    notes: AsyncEngine, engine: AsyncEngine
) -> None:
    batch = [asyncio.create_task(NOTE.scalar(notes, {"n": n, "s": 0.2})) for n in range(3)]
    await asyncio.sleep(0.1)
    batch[0].cancel()
    assert [await t for t in batch[1:]] == [1, 2]
    with pytest.raises(asyncio.CancelledError):
        await batch[0]
    # Its statement went with the others' (committed with them, as a statement alone that
    # PostgreSQL had run before its caller gave up): the worker's writes are fenced for that.
    assert await _stored(engine) == [0, 1, 2]


async def test_a_connection_that_broke_under_a_batch_is_an_outage_for_each_of_its_callers(
    notes: AsyncEngine, engine: AsyncEngine
) -> None:
    pid = await PID.scalar(notes, {})
    batch = [asyncio.create_task(NOTE.scalar(notes, {"n": n, "s": 2})) for n in range(3)]
    await asyncio.sleep(0.3)
    async with engine.connect() as killer:
        await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    lost = await asyncio.gather(*batch, return_exceptions=True)
    assert all(isinstance(e, Exception) and is_postgres_outage(e) for e in lost), lost
    assert await PID.scalar(notes, {}) != pid  # not handed out again
    assert await _stored(engine) == []
