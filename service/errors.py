"""The HTTP face of errors: domain errors (core/errors.py) and dependency outages
(db/outages.py) become clear answers in the one error format, never a traceback."""

from __future__ import annotations

import logging

from botocore.exceptions import ClientError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    INTERNAL_ERROR,
    MAX_PROBLEMS,
    POSTGRES_DOWN,
    PROBLEM_JSON,
    STORE_DOWN,
    STORE_ERROR,
    CallstreamError,
    RedisUnavailable,
    error_body,
)
from core.ingestion import CALL_ID_RULE
from core.metrics import count_error_answer
from db.object_store import NoObjectStore
from db.outages import (
    POSTGRES_OUTAGE,
    REDIS_OUTAGE,
    STORE_OUTAGE,
    is_postgres_outage,
    is_store_outage,
)

log = logging.getLogger(__name__)


def answer_body(status: int, code: str, detail: str, **extensions: object) -> bytes:
    """The body of every error answer of the API, whatever path sends it (the gate, the fast
    path, FastAPI's handlers), counted by its code in /metrics."""
    count_error_answer(code)
    return error_body(status, code, detail, **extensions)


def error_response(
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extensions: object,
) -> Response:
    body = answer_body(status, code, detail, **extensions)
    return Response(body, status, headers, media_type=PROBLEM_JSON)


def domain_response(error: CallstreamError) -> Response:
    return error_response(error.status_code, error.code, error.detail, error.headers or None)


async def _domain(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, CallstreamError)
    return domain_response(exc)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


async def _http_error(_: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route, wrong method, an unreadable body) in our format."""
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)


async def _invalid_request(_: Request, exc: Exception) -> Response:
    """FastAPI's 422, minus the offending input (it may be huge, or not JSON at all: NaN), and
    at most MAX_PROBLEMS of them: the answer must stay small whatever came in."""
    assert isinstance(exc, RequestValidationError)
    found = exc.errors()
    problems = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in found[:MAX_PROBLEMS]
    ]
    if all(p["loc"] == ["path", "call_id"] for p in problems):
        # The one refusal every transport gives a bad call id (the media stream's included).
        detail = f"path.call_id: the call id must be {CALL_ID_RULE}"
        return error_response(422, "invalid_call_id", detail, errors=problems)
    where = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems[:3])
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    detail = f"{len(found)} problem(s) with the request: {where}{more}"
    return error_response(422, "invalid_request", detail, errors=problems)


async def _redis_down(request: Request, exc: Exception) -> Response:
    log.warning("Redis unavailable during %s %s: %r", request.method, request.url.path, exc)
    return domain_response(RedisUnavailable())


async def _database_error(request: Request, exc: Exception) -> Response:
    if not is_postgres_outage(exc):
        return await _unexpected(request, exc)
    log.warning("PostgreSQL unavailable during %s %s: %r", request.method, request.url.path, exc)
    return error_response(503, "postgres_unavailable", POSTGRES_DOWN, {"Retry-After": "2"})


async def _store_error(request: Request, exc: Exception) -> Response:
    """The object store (AUDIO_STORE_URL) down or busy: 503, try again; anything else it
    answers (a missing object, a refused key): 502, saying it was the store."""
    if is_store_outage(exc):
        log.warning(
            "object store unavailable during %s %s: %r", request.method, request.url.path, exc
        )
        return error_response(503, "store_unavailable", STORE_DOWN, {"Retry-After": "2"})
    log.error("object store error during %s %s: %r", request.method, request.url.path, exc)
    return error_response(502, "store_error", STORE_ERROR)


async def _no_store(request: Request, exc: Exception) -> Response:
    log.error("%s %s: %s", request.method, request.url.path, exc)
    return error_response(502, "store_error", str(exc))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", INTERNAL_ERROR)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CallstreamError, _domain)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for pg_error in (*POSTGRES_OUTAGE, DBAPIError):
        app.add_exception_handler(pg_error, _database_error)
    for redis_error in REDIS_OUTAGE:
        app.add_exception_handler(redis_error, _redis_down)
    for store_error in (*STORE_OUTAGE, ClientError):
        app.add_exception_handler(store_error, _store_error)
    app.add_exception_handler(NoObjectStore, _no_store)
    app.add_exception_handler(Exception, _unexpected)
