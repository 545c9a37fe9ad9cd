"""What "Redis is down", "PostgreSQL is down" and "the object store is down" look like, written
once for every caller: the API answers 503 for them, the worker retries the job later, readiness
reports them. And the other
kind of database error, a refusal: PostgreSQL (or its driver) refuses the statement because of
the data in it, and would refuse it again however often it is retried.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator

import asyncpg
from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError as BotoHTTPClientError
from redis.exceptions import ClusterDownError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

# redis-py wraps its socket errors in these two; a cluster node answers CLUSTERDOWN while the
# slots of a dead master wait for its replica's promotion (a failover: seconds). A restarted Redis
# answers LOADING while it reads its AOF back: redis-py's BusyLoadingError is a ConnectionError.
REDIS_OUTAGE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
)

_POSTGRES_DOWN: tuple[type[Exception], ...] = (
    OperationalError,
    PoolTimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    # A prepared statement outlived a schema change; SQLAlchemy drops its cache, a retry works.
    asyncpg.InvalidCachedStatementError,
    asyncpg.exceptions.OutdatedSchemaCacheError,
)
# What a caller catches to look at a PostgreSQL outage (`except POSTGRES_OUTAGE`: the API's error
# handlers, a read that falls back to Redis): the errors above, and OSError, which asyncpg lets
# escape as it is. Only is_postgres_outage says which OSError is one.
POSTGRES_OUTAGE: tuple[type[Exception], ...] = (*_POSTGRES_DOWN, OSError)

# asyncpg lets a socket error escape as it is, so an OSError may be a connection to PostgreSQL
# that failed; but a worker meets other OSErrors too (a full disk, a file it may not read, too many
# open files), which no wait cures: only these count as an outage. A name that does not resolve
# (socket.gaierror) is a DNS blip while a managed database fails over.
# A TLS connection the server closed (a managed database restarting) ends in ssl's EOF errors.
_CONNECTION_OSERRORS: tuple[type[OSError], ...] = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)
_CONNECTION_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.EADDRNOTAVAIL,  # connecting to ::1 where IPv6 is off: one of localhost's addresses
    }
)


def is_connection_error(error: BaseException) -> bool:
    """A socket that could not connect, or that broke: refused, reset, unreachable, timed out.
    asyncio's connect to a name of several addresses (localhost: ::1 and 127.0.0.1) that all
    failed raises a bare OSError "Multiple exceptions: [Errno 111] Connect call failed ..."."""
    if not isinstance(error, OSError):
        return False
    if isinstance(error, _CONNECTION_OSERRORS) or error.errno in _CONNECTION_ERRNOS:
        return True
    said = str(error)
    return said.startswith("Multiple exceptions:") and "Connect call failed" in said


# SQLSTATE classes that mean "not now" rather than "not this": the connection (08), a rollback
# the server chose (40: serialization failure, deadlock), resources (53: too many connections,
# disk full, out of memory), an operator or a restart (57: shutdown, starting up, a cancelled
# statement), the server's system (58: I/O). SQLAlchemy wraps asyncpg's errors in a DBAPIError
# that is none of the classes above, so the code is what tells them apart.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_SQLSTATES = frozenset(
    {
        "25006",  # read-only transaction: connected to a standby during a failover
        "55P03",  # lock not available
        "55006",  # object in use
    }
)

# What a refusal was about, by SQLSTATE (then by class): words for the call's last_error that
# name the problem, never the value (PostgreSQL's own message may quote the value).
_REFUSED_SQLSTATES = {
    "22021": "text holding a character PostgreSQL cannot store, such as NUL (\\u0000)",
    "22P05": "a character PostgreSQL cannot store, such as \\u0000 in JSON",
    "22003": "a number out of range for its column",
    "22001": "text longer than its column allows",
    "22P02": "a value that is not valid for its column's type",
}
_REFUSED_CLASSES = {
    "22": "a value PostgreSQL refuses",
    "23": "a row a constraint of the table refuses",
    "42": "a statement PostgreSQL refuses (schema or permissions)",
    "54": "a value beyond PostgreSQL's limits",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: SQLAlchemy's DBAPIError wraps the dialect's error (`orig`),
    which wraps asyncpg's (`__cause__`). Implicit context is not followed: it may be unrelated."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE PostgreSQL answered with, wherever it sits in the chain; None if none."""
    for error in _chain(exc):
        code = getattr(error, "sqlstate", None)
        if isinstance(code, str) and code:
            return code
    return None


def is_postgres_outage(exc: BaseException) -> bool:
    """True when PostgreSQL is unreachable, went away mid-statement, or cannot serve right now
    (restarting, read-only, out of connections, a deadlock): worth waiting for. Any other
    database error is about the data, and retrying it would only fail again."""
    for error in _chain(exc):
        if isinstance(error, _POSTGRES_DOWN) or is_connection_error(error):
            return True
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
    code = sqlstate(exc)
    return code is not None and (
        code[:2] in _TRANSIENT_SQLSTATE_CLASSES or code in _TRANSIENT_SQLSTATES
    )


# The object store (AUDIO_STORE_URL) unreachable, or saying "not now" (5xx, throttling).
STORE_OUTAGE: tuple[type[Exception], ...] = (
    BotoConnectionError,
    BotoHTTPClientError,
    ReadTimeoutError,
    ConnectTimeoutError,
)
_STORE_BUSY = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"})


def _store_answer(error: ClientError) -> tuple[str, int]:
    """The store's error code (`NoSuchBucket`, `AccessDenied`, ...) and HTTP status."""
    answer = error.response
    code = str(answer.get("Error", {}).get("Code", ""))
    status = int(answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_store_outage(exc: BaseException) -> bool:
    for error in _chain(exc):
        if isinstance(error, STORE_OUTAGE):
            return True
        if isinstance(error, ClientError):
            code, status = _store_answer(error)
            if code in _STORE_BUSY or status >= 500:
                return True
    return False


def store_refusal(exc: BaseException) -> str | None:
    """What the object store refused, when it answered "not this" (a 4xx: no such bucket, access
    denied, a key it will not take) rather than "not now": asking again would only be refused
    again, until an operator mends the store. None when `exc` is no store answer, or an outage.
    The words name the store's code and status, never the key (which holds the call's id)."""
    if is_store_outage(exc):
        return None
    for error in _chain(exc):
        if isinstance(error, ClientError):
            code, status = _store_answer(error)
            operation = getattr(error, "operation_name", "") or "a request"
            return f"{operation} answered {code or 'an error'} (HTTP {status or '?'})"
    return None


def is_outage(exc: BaseException) -> bool:
    return (
        any(isinstance(e, REDIS_OUTAGE) for e in _chain(exc))
        or is_postgres_outage(exc)
        or is_store_outage(exc)
    )


def postgres_refusal(exc: BaseException) -> str | None:
    """What PostgreSQL or its driver refused, in words that never quote the data (for a reason
    kept on the call: the driver's message may hold the value, and SQLAlchemy's the statement);
    None when `exc` is no database error, or an outage."""
    if is_postgres_outage(exc):
        return None
    chain = list(_chain(exc))
    if not any(
        isinstance(e, (StatementError, asyncpg.PostgresError, asyncpg.InterfaceError))
        for e in chain
    ):
        return None
    # The innermost error is the driver's own, the one whose class name says the most.
    name = type(chain[-1]).__name__
    code = sqlstate(exc)
    if code is None:
        if any(isinstance(e, asyncpg.InterfaceError) for e in chain):
            # asyncpg refuses a value before sending it (e.g. an int out of int32's range).
            return f"a value the driver cannot send as its column's type ({name})"
        return f"a statement the database driver refused ({name})"
    if isinstance(chain[-1], OverflowError):  # asyncpg's: a number too big for its binary type
        what = _REFUSED_SQLSTATES["22003"]
    else:
        what = _REFUSED_SQLSTATES.get(code) or _REFUSED_CLASSES.get(code[:2], "an error")
    return f"{what} ({name}, SQLSTATE {code})"
