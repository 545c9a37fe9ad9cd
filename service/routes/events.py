"""The live event feed for supervisors: Server-Sent Events at GET /v1/events, and the same
events as JSON messages at WS /ws/supervisor. Both read this process's one feed reader
(service/feed.py) and resume after a given event id."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect
from sse_starlette import EventSourceResponse, ServerSentEvent

from db.events import Event
from db.feed_events import MAX_EVENT_BYTES, FeedMessage, ResetEvent
from db.states import CallState
from service.asgi import CLOSE_POLICY
from service.deps import ResourcesDep, get_ws_resources, origin_allowed
from service.feed import EventFilter, FeedHub, Reset
from service.schemas import INVALID_REQUEST

router = APIRouter(tags=["supervision"])

EVENT_ID_PATTERN = r"^\d{1,20}(-\d{1,20})?$"
RETRY_MS = 2_000  # how long an EventSource waits before it reconnects
FRAME_CACHE_SIZE = 256  # recent events' frames: 256 x 16 KB at most (4 MB), in practice ~100 KB

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

FEED_DESCRIPTION = f"""Every call's state changes, AI attempts (live windows' too: `live`),
ingestion progress (at most once a second per live call), stored segments and transcribed
utterances, as they happen. Each event has an `id:` (resume with `Last-Event-ID` or
`last_event_id`: nothing lost or repeated within the kept window), an `event:` name (`state`,
`attempt`, `progress`, `segment`, `utterance`) and one line of JSON `data:` (the schema below),
at most {MAX_EVENT_BYTES} bytes. If the resume position is no longer kept,
the first event is `reset`: re-read the calls (GET /v1/calls), then carry on. A comment every
EVENTS_HEARTBEAT_S keeps proxies from closing a quiet connection."""


class _EventStream(EventSourceResponse):
    """sse-starlette's response, naming its media type so that the OpenAPI document files the
    events' schema under text/event-stream."""

    media_type = "text/event-stream"


def _filter(call_id: str | None, states: list[CallState] | None) -> EventFilter:
    return EventFilter(call_id, frozenset(s.value for s in states or ()))


def _reset_body(reset: Reset) -> bytes:
    return ResetEvent(reason=reset.reason).model_dump_json().encode()


@functools.lru_cache(maxsize=FRAME_CACHE_SIZE)
def _frame(event_id: str, event_type: str, wire: bytes) -> bytes:
    """One event as Server-Sent Event bytes: encoded once per process, not once per
    subscriber (hundreds of subscribers get the same event, all within one hand-out, so a few
    hundred recent frames is all the cache needs to hold). Every event is at most
    MAX_EVENT_BYTES (db/feed_events.py), so the cache holds at most a few megabytes."""
    return ServerSentEvent(wire.decode(), event=event_type, id=event_id).encode()


def _encoded(item: Event | Reset) -> bytes:
    if isinstance(item, Reset):
        return ServerSentEvent(_reset_body(item).decode(), event="reset").encode()
    if len(item.wire) > MAX_EVENT_BYTES:
        # Appended by something other than db/feed_events.py's encode (an older release): sent
        # as it is, but never kept in the cache.
        return _frame.__wrapped__(item.id, item.type, item.wire)
    return _frame(item.id, item.type, item.wire)


def _frames(batch: list[Event | Reset]) -> bytes:
    return b"".join(_encoded(item) for item in batch)


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
    response_class=_EventStream,
    responses={
        200: {
            "model": FeedMessage,
            "description": "Server-Sent Events; each `data:` is one of these (by `type`).",
        },
        **INVALID_REQUEST,
    },
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
    if not origin_allowed(websocket.scope, res.settings.ws_allowed_origins):
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
