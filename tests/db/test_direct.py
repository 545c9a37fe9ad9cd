"""db/direct.py against the real PostgreSQL: a statement sent to asyncpg itself answers as
SQLAlchemy's would, stays inside a transaction it is given, and a connection that broke under it
is not handed out again."""

from __future__ import annotations

import asyncio

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
