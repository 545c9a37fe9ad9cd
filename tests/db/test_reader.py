"""db/engine.make_reader and execute_once: one-statement reads without a pre-ping, which survive
a pooled connection that PostgreSQL dropped since its last use."""

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from db.engine import execute_once, make_reader
from settings import Settings

BACKEND = text("SELECT pg_backend_pid(), current_setting('transaction_isolation')")


@pytest.fixture
async def reader(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = make_reader(settings.database_url, pool_size=1)
    yield engine
    await engine.dispose()


async def test_a_read_after_its_pooled_connection_was_dropped_runs_again_on_a_fresh_one(
    reader: AsyncEngine, engine: AsyncEngine
) -> None:
    first = (await execute_once(reader, BACKEND, {})).one()[0]
    async with engine.connect() as admin:  # PostgreSQL restarting looks alike to the pool
        await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    again = (await execute_once(reader, BACKEND, {})).one()[0]
    assert again != first


async def test_a_failing_statement_is_not_run_again(reader: AsyncEngine) -> None:
    with pytest.raises(DBAPIError) as failed:
        await execute_once(reader, text("SELECT 1 / 0"), {})
    assert not failed.value.connection_invalidated


async def test_reads_share_one_pooled_connection(reader: AsyncEngine) -> None:
    pid = (await execute_once(reader, BACKEND, {})).one()[0]
    row = (await execute_once(reader, BACKEND, {})).one()
    pid_again, isolation = tuple(row)
    assert pid_again == pid
    assert isolation == "read committed"
