"""Domain errors and the handlers that turn them, and dependency outages, into clear answers.

CallstreamError            carries its HTTP status and a stable code
├── CallNotFound           404: no packet was ever received for the call
├── CallAlreadyCompleted   409: the call is completed, packets are refused
├── CallNotFailed          409: only FAILED calls can be replayed
└── PayloadTooLarge        413: a packet's data exceeds MAX_PACKET_DATA_BYTES
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# What PostgreSQL being down or unreachable looks like from SQLAlchemy and asyncpg.
POSTGRES_OUTAGE = (OperationalError, PoolTimeoutError, DBAPIError, OSError)


class CallstreamError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class CallNotFound(CallstreamError):
    status_code = 404
    code = "call_not_found"


class CallAlreadyCompleted(CallstreamError):
    status_code = 409
    code = "call_completed"


class CallNotFailed(CallstreamError):
    status_code = 409
    code = "call_not_failed"


class PayloadTooLarge(CallstreamError):
    status_code = 413
    code = "payload_too_large"


def _error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


async def _domain(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CallstreamError)
    return _error(exc.status_code, exc.code, exc.detail)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method, an unreadable body) in our format."""
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, minus the offending input: it may be huge, or not JSON at all (NaN)."""
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": problems, "code": "invalid_request"}, status_code=422)


# Not "nothing was stored": a timeout can hide a write that happened. Retrying is safe because
# a packet already stored is answered as a duplicate.
REDIS_DOWN = (
    "Redis is unavailable. Retry after Retry-After seconds; a packet that did get stored "
    "is answered as a duplicate, so retrying is safe."
)


def redis_unavailable_body() -> bytes:
    return orjson.dumps({"detail": REDIS_DOWN, "code": "redis_unavailable"})


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unavailable during %s %s: %r", request.method, request.url.path, exc)
    return _error(503, "redis_unavailable", REDIS_DOWN, {"Retry-After": "1"})


async def _postgres_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("PostgreSQL unavailable during %s %s: %r", request.method, request.url.path, exc)
    detail = "PostgreSQL is unavailable; retry shortly."
    return _error(503, "postgres_unavailable", detail, {"Retry-After": "2"})


INTERNAL_ERROR = "Internal error; it has been logged."


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal_error", INTERNAL_ERROR)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CallstreamError, _domain)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for redis_error in (RedisConnectionError, RedisTimeoutError):
        app.add_exception_handler(redis_error, _redis_down)
    for pg_error in POSTGRES_OUTAGE:
        app.add_exception_handler(pg_error, _postgres_down)
    app.add_exception_handler(Exception, _unexpected)
