"""Engine and session factories; the caller owns their lifetime (no module-level engine)."""

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
