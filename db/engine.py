"""Engine and session factories; the caller owns their lifetime (no module-level engine)."""

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Executable, Result
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    connect_timeout_s: float = 5.0,
    pre_ping: bool = True,
    overflow: bool = True,
) -> AsyncEngine:
    """`pre_ping` costs a round trip per checkout; a caller that retries on a dropped
    connection anyway (the worker: db.outages.is_postgres_outage) does without it.
    `overflow` lets a burst open as many connections again, closed when given back: right for
    rare peaks, wrong for a worker whose hundreds of jobs would open and close them all the
    time (each new connection costs a TLS attempt and prepares its statements anew)."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size if overflow else 0,
        pool_pre_ping=pre_ping,
        # Parameters are the calls' data (packets, transcripts): never in logs or error messages.
        hide_parameters=True,
        pool_recycle=1800,
        # A dead PostgreSQL must fail fast so callers can answer or retry, never hang.
        pool_timeout=connect_timeout_s,
        connect_args={"timeout": connect_timeout_s, "command_timeout": 30},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, without BEGIN and COMMIT: for statements that are atomic on their own."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def make_reader(url: str, *, pool_size: int = 4, connect_timeout_s: float = 5.0) -> AsyncEngine:
    """A pool for statements that are atomic on their own and read only (execute_once): no
    BEGIN and ROLLBACK around them, and no pre-ping round trip per checkout. A status read
    (GET /v1/calls/{id}) cost the API ~2.3 ms of CPU with both, about a third of it theirs
    (BENCHMARKS.md, Real-time capacity)."""
    engine = make_engine(url, pool_size=pool_size, connect_timeout_s=connect_timeout_s,
                         pre_ping=False)  # fmt: skip
    return autocommit(engine)


async def execute_once(
    engine: AsyncEngine, statement: Executable, params: Mapping[str, Any]
) -> Result[Any]:
    """Run one statement on a connection of `engine` (make_reader's), its rows fetched. Without
    a pre-ping, a pooled connection may have been dropped since its last use (PostgreSQL
    restarted): SQLAlchemy then invalidates it, and every connection of the pool as old, and the
    statement runs once more, on a fresh connection. Any other error, or a second drop, is the
    caller's (an outage)."""
    try:
        return await _execute(engine, statement, params)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
    return await _execute(engine, statement, params)


async def _execute(
    engine: AsyncEngine, statement: Executable, params: Mapping[str, Any]
) -> Result[Any]:
    async with engine.connect() as connection:
        return await connection.execute(statement, params)
