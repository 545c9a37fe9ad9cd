"""The ingestion hot path as a bare ASGI layer in front of the whole FastAPI app.

A PBX sends a packet per call every 20-60 ms, so `POST /v1/call/stream/{call_id}` is most of the
traffic. FastAPI's per-request machinery (its middleware stack, request objects, dependency
resolution, a JSON pass then a validation pass) costs more than the Redis round trip itself.
This layer answers single packets and batches directly: the body is validated from bytes in one
pass (pydantic-core) and handed to core/ingestion.py, exactly as the FastAPI route does.

Anything unusual (a body that fails validation, a body that is not declared as JSON, a path that
is not a packet or a batch of a valid call id) is handed to FastAPI untouched, with the body
replayed, so error answers and /docs have one source: service/routes/ingest.py.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import INTERNAL_ERROR, REDIS_DOWN, CallstreamError, error_body
from core.ingestion import Ingestion, is_call_id, is_json
from db.outages import REDIS_OUTAGE
from service.resources import ApiResources
from service.routes.ingest import BATCH_SUFFIX, STREAM_PATH
from service.schemas import BatchIn, PacketIn

log = logging.getLogger(__name__)
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
            status, answer = await _ingest(res.ingestion, call_id, request)
        except CallstreamError as exc:
            await _answer(send, exc.status_code, error_body(exc.code, exc.detail))
        except REDIS_OUTAGE as exc:
            log.warning("Redis unavailable during ingestion of %s: %r", call_id, exc)
            await _answer(send, 503, error_body("redis_unavailable", REDIS_DOWN), b"1")
        except Exception:
            # Outside FastAPI's error middleware: answer as its handler would, never a traceback.
            log.exception("unhandled error ingesting packets of %s", call_id)
            await _answer(send, 500, error_body("internal_error", INTERNAL_ERROR))
        else:
            await _answer(send, status, orjson.dumps(answer))


async def _ingest(
    ingestion: Ingestion, call_id: str, request: PacketIn | BatchIn
) -> tuple[int, dict[str, Any]]:
    if isinstance(request, BatchIn):
        return 202, await ingestion.batch(call_id, request.packets)
    return await ingestion.packet(call_id, request)


def _ingest_target(scope: Scope) -> tuple[str, bool] | None:
    """(call id, is a batch) for the requests this layer serves; None for everything else."""
    if scope["type"] != "http" or scope["method"] != "POST" or "state" not in scope:
        return None
    path: str = scope["path"]
    if not path.startswith(STREAM_PATH):
        return None
    call_id = path[len(STREAM_PATH) :]
    is_batch = call_id.endswith(BATCH_SUFFIX)
    if is_batch:
        call_id = call_id[: -len(BATCH_SUFFIX)]
    if not is_call_id(call_id):
        return None
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
    if content_type is None or content_type == b"application/json":  # the common cases, first
        return call_id, is_batch
    return (call_id, is_batch) if is_json(content_type.decode("latin-1")) else None


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


async def _answer(send: Send, status: int, body: bytes, retry_after: bytes | None = None) -> None:
    headers: list[Any] = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", retry_after))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
