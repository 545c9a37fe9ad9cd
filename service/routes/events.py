"""The live event feed for supervisors: Server-Sent Events at GET /v1/events, and the same
events as JSON messages at WS /ws/supervisor. Both read this process's one feed reader
(service/feed.py) and resume after a given event id."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect
from sse_starlette import EventSourceResponse, ServerSentEvent

from db.events import Event
from db.states import CallState
from service.asgi import CLOSE_POLICY
from service.deps import ResourcesDep, get_ws_resources, origin_allowed
from service.feed import EventFilter, FeedHub, Reset
from service.schemas import INVALID_REQUEST

router = APIRouter(tags=["supervision"])

EVENT_ID_PATTERN = r"^\d{1,20}(-\d{1,20})?$"
RETRY_MS = 2_000  # how long an EventSource waits before it reconnects

CallIdFilter = Annotated[
    str | None, Query(max_length=128, description="Only the events of this call.")
]
StateFilter = Annotated[
    list[CallState] | None,
    Query(description="Only events whose call is (now) in one of these states; repeatable."),
]
ResumeAfter = Annotated[
    str | None,
    Query(
        pattern=EVENT_ID_PATTERN,
        description="Resume after this event id (as Last-Event-ID does).",
    ),
]

FEED_DESCRIPTION = """Every call's state changes, AI attempts and (at most once a second per live
call) ingestion progress, as they happen. Each event has an `id:` (resume with `Last-Event-ID`
or `last_event_id`: nothing lost or repeated within the kept window), an `event:` name (`state`,
`attempt`, `progress`) and one line of JSON `data:`. If the resume position is no longer kept,
the first event is `reset`: re-read the calls (GET /v1/calls), then carry on. A comment every
EVENTS_HEARTBEAT_S keeps proxies from closing a quiet connection."""


def _filter(call_id: str | None, states: list[CallState] | None) -> EventFilter:
    return EventFilter(call_id, frozenset(s.value for s in states or ()))


def _reset_body(reset: Reset) -> bytes:
    return orjson.dumps({"type": "reset", "reason": reset.reason})


@functools.lru_cache(maxsize=4096)
def _frame(event_id: str, event_type: str, wire: bytes) -> bytes:
    """One event as Server-Sent Event bytes: encoded once per process, not once per
    subscriber (hundreds of subscribers get the same event)."""
    return ServerSentEvent(wire.decode(), event=event_type, id=event_id).encode()


def _frames(batch: list[Event | Reset]) -> bytes:
    return b"".join(
        _frame(item.id, item.type, item.wire)
        if isinstance(item, Event)
        else ServerSentEvent(_reset_body(item).decode(), event="reset").encode()
        for item in batch
    )


async def _server_sent(
    hub: FeedHub, wanted: EventFilter, resume_after: str | None
) -> AsyncIterator[ServerSentEvent | bytes]:
    async with hub.subscribe(wanted, resume_after) as batches:
        # Sent once subscribed: how long to wait before reconnecting, and that the feed is open.
        yield ServerSentEvent(comment="connected", retry=RETRY_MS)
        async for batch in batches:
            yield _frames(batch)  # what is ready goes out in one write


@router.get(
    "/v1/events",
    summary="Live event feed (Server-Sent Events)",
    description=FEED_DESCRIPTION,
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **INVALID_REQUEST},
)
async def event_stream(
    res: ResourcesDep,
    call_id: CallIdFilter = None,
    state: StateFilter = None,
    last_event_id: ResumeAfter = None,
    last_event_id_header: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            pattern=EVENT_ID_PATTERN,
            description="Sent by an EventSource that reconnects: resume after this event.",
        ),
    ] = None,
) -> EventSourceResponse:
    resume_after = last_event_id_header or last_event_id
    await res.feed.ready()  # a 503 now rather than a stream that breaks once it started
    return EventSourceResponse(
        _server_sent(res.feed, _filter(call_id, state), resume_after),
        ping=res.settings.events_heartbeat_s,
        # Transcripts are personal data; a buffering proxy would hold events back.
        headers={"Cache-Control": "private, no-cache", "X-Accel-Buffering": "no"},
    )


@router.websocket("/ws/supervisor")
async def supervisor_socket(
    websocket: WebSocket,
    call_id: CallIdFilter = None,
    state: StateFilter = None,
    last_event_id: ResumeAfter = None,
) -> None:
    """The feed as JSON text messages (the event objects of GET /v1/events, and
    {"type": "reset"}), with the same filters and resume position as query parameters."""
    res = get_ws_resources(websocket)
    if not origin_allowed(websocket, res.settings.ws_allowed_origins):
        await websocket.close(CLOSE_POLICY, "origin not allowed")
        return
    # Subscribed before the handshake completes: a client that is connected misses nothing.
    async with res.feed.subscribe(_filter(call_id, state), last_event_id) as batches:
        await websocket.accept()
        # The client sends nothing; reading is how its going away is noticed.
        gone = asyncio.create_task(_until_closed(websocket))
        sending = asyncio.create_task(_send_events(websocket, batches))
        try:
            await asyncio.wait({gone, sending}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (gone, sending):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                    await task


async def _send_events(websocket: WebSocket, batches: AsyncIterator[list[Event | Reset]]) -> None:
    async for batch in batches:
        for item in batch:
            body = item.wire if isinstance(item, Event) else _reset_body(item)
            await websocket.send_text(body.decode())


async def _until_closed(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass
