"""What "Redis is down" and "PostgreSQL is down" look like, written once for every caller: the API
answers 503 for them, the worker retries the job later, readiness reports them."""

from __future__ import annotations

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

# redis-py wraps its socket errors in these two.
REDIS_OUTAGE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)

POSTGRES_OUTAGE: tuple[type[Exception], ...] = (
    OperationalError,
    PoolTimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    OSError,  # asyncpg lets a refused or reset socket escape as it is
)


def is_postgres_outage(exc: BaseException) -> bool:
    """True when PostgreSQL is unreachable or went away mid-statement: worth waiting for. Any
    other database error is about the data, and retrying it would only fail again."""
    if isinstance(exc, POSTGRES_OUTAGE):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, REDIS_OUTAGE) or is_postgres_outage(exc)
