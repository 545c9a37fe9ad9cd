"""The ingestion hot path as a bare ASGI layer in front of the whole FastAPI app.

A PBX sends a packet per call every 20-60 ms, so `POST /v1/call/stream/{call_id}` is most of the
traffic. FastAPI's per-request machinery (its middleware stack, request objects, dependency
resolution, a JSON pass then a validation pass) costs more than the Redis round trip itself.
This layer answers single packets and batches directly: the body is validated from bytes in one
pass (pydantic-core), the packets go to Redis in one script call, the answer is serialised once.

It answers exactly as the FastAPI route does (same models, same helpers, same status codes; the
tests run both). Anything unusual (a body that fails validation, an unknown content type, a path
that is not a single packet) is handed to FastAPI untouched, with the body replayed, so error
answers and /docs have one source: service/routes/ingest.py.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.answers import packet_answer
from service.errors import INTERNAL_ERROR, CallstreamError, redis_unavailable_body
from service.resources import ApiResources
from service.routes.ingest import PREFIX, append_batch, append_packets
from service.schemas import CALL_ID_PATTERN, BatchIn, PacketIn

log = logging.getLogger(__name__)
_CALL_ID = re.compile(CALL_ID_PATTERN)
_STREAM_PREFIX = f"{PREFIX}/stream/"
_BATCH_SUFFIX = "/batch"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class IngestFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        # Whoever holds `service.app:app` still sees the FastAPI app behind it (openapi(),
        # routes, dependency_overrides, state...).
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = _ingest_target(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        call_id, is_batch = target
        body = await _read_body(receive)
        if body is None:  # the client went away mid-body
            return
        try:
            request = (
                BatchIn.model_validate_json(body)
                if is_batch
                else PacketIn.model_validate_json(body)
            )
        except ValidationError:
            await self.app(scope, _replay(body, receive), send)
            return
        res: ApiResources = scope["state"]["resources"]
        try:
            status, answer = await _ingest(res, call_id, request)
        except CallstreamError as exc:
            await _answer(send, exc.status_code, _error_json(exc.code, exc.detail))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("Redis unavailable during ingestion of %s: %r", call_id, exc)
            await _answer(send, 503, redis_unavailable_body(), retry_after=b"1")
        except Exception:
            # Outside FastAPI's error middleware: answer as its handler would, never a traceback.
            log.exception("unhandled error ingesting packets of %s", call_id)
            await _answer(send, 500, _error_json("internal_error", INTERNAL_ERROR))
        else:
            await _answer(send, status, answer)


async def _ingest(
    res: ApiResources, call_id: str, request: PacketIn | BatchIn
) -> tuple[int, bytes]:
    if isinstance(request, BatchIn):
        return 202, orjson.dumps(await append_batch(res, call_id, request))
    (result,) = await append_packets(res, call_id, [request])
    return (200 if result.duplicate else 202), orjson.dumps(packet_answer(call_id, result))


def _ingest_target(scope: Scope) -> tuple[str, bool] | None:
    """(call id, is a batch) for the requests this layer serves; None for everything else."""
    if scope["type"] != "http" or scope["method"] != "POST" or "state" not in scope:
        return None
    path: str = scope["path"]
    if not path.startswith(_STREAM_PREFIX):
        return None
    call_id = path[len(_STREAM_PREFIX) :]
    is_batch = call_id.endswith(_BATCH_SUFFIX)
    if is_batch:
        call_id = call_id[: -len(_BATCH_SUFFIX)]
    if not _CALL_ID.match(call_id):
        return None
    for name, value in scope["headers"]:
        if name == b"content-type":
            is_json = value.split(b";")[0].strip() == b"application/json"
            return (call_id, is_batch) if is_json else None
    return None


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _error_json(code: str, detail: str) -> bytes:
    return orjson.dumps({"detail": detail, "code": code})


async def _answer(send: Send, status: int, body: bytes, retry_after: bytes | None = None) -> None:
    headers: list[Any] = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", retry_after))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
