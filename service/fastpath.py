"""The ingestion hot path as a bare ASGI layer in front of the whole FastAPI app.

A PBX sends a packet per call every 20-60 ms, so `POST /v1/call/stream/{call_id}` is most of the
traffic, and every call ends with `POST /v1/call/complete/{call_id}`. FastAPI's per-request
machinery (its middleware stack, request objects, dependency resolution, a JSON pass then a
validation pass) costs more than the Redis round trip itself.
This layer answers single packets, batches and first completions directly: the body is validated
from bytes in one pass (pydantic-core) and handed to core/ingestion.py, exactly as the FastAPI
routes do.

Anything unusual (a body that fails validation, a body that is not declared as JSON, a path that
is not one of those of a valid call id, a completion that is not the first) is handed to FastAPI
untouched, with the body replayed, so error answers and /docs have one source:
service/routes/ingest.py. (A repeated completion is idempotent: FastAPI completes it again,
finds it done, and answers with the call's current state.)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from enum import Enum
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from core.errors import INTERNAL_ERROR, BodyTooLarge, CallstreamError, RedisUnavailable
from core.ingestion import Ingestion, is_call_id
from core.logs import about
from db.intake import Completion
from db.outages import REDIS_OUTAGE
from db.states import CallState
from service.asgi import AppLayer, send_answer, send_error, send_problem
from service.bodies import check_unique_keys, is_json
from service.gate import actor_of
from service.resources import ApiResources
from service.routes.ingest import BATCH_SUFFIX, COMPLETE_PATH, STREAM_PATH
from service.schemas import BatchIn, PacketIn

log = logging.getLogger(__name__)


class IngestFastPath(AppLayer):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = _ingest_target(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        call_id, kind = target
        try:
            body = await _read_body(receive)
        except BodyTooLarge as too_large:  # the gate cut the body off past MAX_BODY_BYTES
            await send_error(send, too_large)
            return
        if body is None:  # the client went away mid-body
            return
        if kind is _Kind.COMPLETE:
            await self._complete(scope, receive, send, call_id, body)
            return
        is_batch = kind is _Kind.BATCH
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
        await _guarded(send, call_id, _ingest(res.ingestion, call_id, request, body))

    async def _complete(
        self, scope: Scope, receive: Receive, send: Send, call_id: str, body: bytes
    ) -> None:
        res: ApiResources = scope["state"]["resources"]

        async def first_completion() -> tuple[int, dict[str, Any]] | None:
            completion = await res.ingestion.complete(call_id, actor=actor_of(scope))
            if completion is not Completion.COMPLETED:
                return None
            return 202, {"call_id": call_id, "state": CallState.COMPLETED.value}

        if not await _guarded(send, call_id, first_completion()):
            await self.app(scope, _replay(body, receive), send)


async def _guarded(
    send: Send, call_id: str, work: Awaitable[tuple[int, dict[str, Any]] | None]
) -> bool:
    """Answer with what `work` returns, or with the error it raises, as FastAPI's handlers
    would (this layer is outside FastAPI's error middleware): never a traceback. False, with
    nothing sent, when `work` returns None (FastAPI is to answer)."""
    try:
        outcome = await work
    except CallstreamError as exc:
        await send_error(send, exc)
    except REDIS_OUTAGE as exc:
        log.warning(
            "Redis unavailable during ingestion of %s: %r", call_id, exc, extra=about(call_id)
        )
        await send_error(send, RedisUnavailable())
    except Exception:
        log.exception("unhandled error ingesting packets of %s", call_id, extra=about(call_id))
        await send_problem(send, 500, "internal_error", INTERNAL_ERROR)
    else:
        if outcome is None:
            return False
        status, answer = outcome
        await send_answer(send, status, orjson.dumps(answer))
    return True


async def _ingest(
    ingestion: Ingestion, call_id: str, request: PacketIn | BatchIn, body: bytes
) -> tuple[int, dict[str, Any]]:
    if isinstance(request, BatchIn):
        check_unique_keys(body, len(request.packets))
        return 202, await ingestion.batch(call_id, request.packets)
    check_unique_keys(body, 1)
    return await ingestion.packet(call_id, request)


class _Kind(Enum):
    PACKET = "packet"
    BATCH = "batch"
    COMPLETE = "complete"


def _ingest_target(scope: Scope) -> tuple[str, _Kind] | None:
    """(call id, what is asked) for the requests this layer serves; None for everything else."""
    if scope["type"] != "http" or scope["method"] != "POST" or "state" not in scope:
        return None
    path: str = scope["path"]
    if path.startswith(COMPLETE_PATH):
        call_id = path[len(COMPLETE_PATH) :]
        return (call_id, _Kind.COMPLETE) if is_call_id(call_id) else None
    if not path.startswith(STREAM_PATH):
        return None
    call_id = path[len(STREAM_PATH) :]
    kind = _Kind.BATCH if call_id.endswith(BATCH_SUFFIX) else _Kind.PACKET
    if kind is _Kind.BATCH:
        call_id = call_id[: -len(BATCH_SUFFIX)]
    if not is_call_id(call_id):
        return None
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
    if content_type is None or content_type == b"application/json":  # the common cases, first
        return call_id, kind
    return (call_id, kind) if is_json(content_type.decode("latin-1")) else None


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
