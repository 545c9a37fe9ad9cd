"""What the WebSocket feeds (Asterisk chan_websocket, FreeSWITCH, Genesys AudioHook) share: the
handshake's access check, reading the socket, running a FeedSession over it, and closing with the
code a refusal calls for.

Under service/ws_protocol.py (`make run`'s server) a feed's audio is taken as it is read, as the
Twilio stream's media frames are: the protocol hands each binary frame to the feed's `audio`
(its binary sink) without waking the feed's task, which wakes once a hold window to store what
was taken (the socket is not read again until then: a window's frames come in one read).
Anything else (the protocol's text messages, a frame before the start, one that breaks a rule)
reaches the task in order and is answered there.

Close codes (RFC 6455): 1000 at a graceful end, 1003 for data that cannot be understood, 1008
for a rule broken (a completed call, a cap, frames before the protocol's start, a key), 1013 for
a retryable failure (Redis, the backlog, replicas: the PBX may try again), 1001 when the socket
has been idle for WS_IDLE_TIMEOUT_S. The reason says what was wrong, in at most 123 bytes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from fastapi import WebSocket, WebSocketDisconnect

from core.access import Role
from core.errors import CallstreamError
from db.outages import REDIS_OUTAGE
from service.asgi import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    frame_sinks,
)
from service.deps import get_ws_resources, origin_allowed
from service.errors import domain_response
from service.feeds.session import FeedRefused, FeedSession, Handler, Refusal, TakeAudio, Wait
from service.gate import KEY_IN_START, actor_of
from service.resources import ApiResources
from service.streaming import CLOSED

log = logging.getLogger(__name__)

CLOSE_CODES = {
    Refusal.MALFORMED: CLOSE_UNSUPPORTED,
    Refusal.POLICY: CLOSE_POLICY,
    Refusal.RETRY: CLOSE_TRY_AGAIN,
    Refusal.IDLE: CLOSE_GOING_AWAY,
    Refusal.TOO_BIG: CLOSE_TOO_BIG,
}
MAX_REASON_BYTES = 123  # what a close frame's reason may hold (RFC 6455, 5.5)

# Says a refusal to the PBX in its protocol's words before the socket closes (AudioHook sends
# a `disconnect` message); None: the close frame's reason says it.
SayRefusal = Callable[[FeedRefused], Awaitable[None]]


def close_reason(refused: FeedRefused) -> str:
    reason = f"{refused.code}: {refused.message}"
    encoded = reason.encode()[:MAX_REASON_BYTES]
    return encoded.decode(errors="ignore")


def key_needed(websocket: WebSocket) -> bool:
    """The gate let the socket in without a key (keys are on, none was in the headers): the
    feed must authorize one of its own (a query parameter, its first message) or refuse."""
    return bool(websocket.scope.get(KEY_IN_START))


def authorize(res: ApiResources, key: str | None) -> None:
    """A key a feed brought outside the headers, checked as the gate checks one (core/access)."""
    try:
        res.keys.authorize(key, Role.INGEST)
    except CallstreamError as error:
        raise FeedRefused.breaking(error) from None


async def refuse_handshake(websocket: WebSocket, refused: FeedRefused) -> None:
    """Refuse before accepting: the PBX sees HTTP 403 (the reason is in the logs)."""
    log.warning("%s refused at the handshake: %s", websocket.url.path, refused.message)
    await websocket.close(CLOSE_POLICY, close_reason(refused))


async def deny(websocket: WebSocket, error: CallstreamError) -> None:
    """Refuse the upgrade with an HTTP answer in the one error format (401, 400...), where the
    server can send one (uvicorn can); else as a 403 close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(domain_response(error))
        return
    await refuse_handshake(websocket, FeedRefused.breaking(error))


def allowed_origin(websocket: WebSocket) -> bool:
    return origin_allowed(websocket.scope, get_ws_resources(websocket).settings.ws_allowed_origins)


def new_session(websocket: WebSocket, transport: str) -> FeedSession:
    res = get_ws_resources(websocket)
    return FeedSession(res.ingestion, transport, actor_of(websocket.scope))


async def run_feed(
    websocket: WebSocket,
    session: FeedSession,
    handle: Handler,
    say: SayRefusal | None = None,
    audio: TakeAudio | None = None,
) -> None:
    """Serve an accepted socket: every frame to `handle` (str: text, bytes: binary) until the
    feed ends, its packets stored as they come (binary frames through `audio` as they are read,
    where the server can: see the module's doc); then what is left is stored, the socket closed
    with the code its end calls for, and the feed ended (the call completes with its last)."""
    settings = get_ws_resources(websocket).settings
    frames = _Frames(websocket)
    sinks = frame_sinks(websocket.scope)
    if sinks is not None and audio is not None:
        session.read_audio_from(sinks, frames.wait, audio)
    refused: FeedRefused | None = None
    try:
        try:
            await session.pump(
                frames, handle, settings.ws_idle_timeout_s, settings.ws_start_timeout_s
            )
        except FeedRefused as error:
            refused = error
        except REDIS_OUTAGE:
            refused = FeedRefused.outage()
        refused = await session.finish(refused)
        if refused is None:
            await _close(websocket, CLOSE_NORMAL)
            return
        log.warning("%s feed of call %s: %s: %s", session.transport, session.call_id,
                    refused.code, refused.message)  # fmt: skip
        if say is not None:
            with contextlib.suppress(Exception):
                await say(refused)
        await _close(websocket, CLOSE_CODES[refused.refusal], close_reason(refused))
    finally:
        await session.end()


class _Frames:
    """The socket's next frame (str: text, bytes: binary; CLOSED once the client went away),
    read when the pump asks for it (a NextMessage): by the pump's own task, not a reader task of
    its own (a task's wake-up and a queue's hand-over a frame were a good part of a feed's cost:
    BENCHMARKS.md, PBX feeds). While a store is in flight nothing is read: up to
    `--ws-max-queue` frames (32) wait in the server, then TCP holds the PBX back."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.wait = Wait()

    async def __call__(self, deadline: float) -> object:
        try:
            # Cancelled by its timeout, receive() gives nothing up (the server's queue keeps it).
            message = await self.wait.until(deadline, self.websocket.receive())
        except (WebSocketDisconnect, RuntimeError):  # RuntimeError: received after the end
            return CLOSED
        if message["type"] == "websocket.disconnect":
            return CLOSED
        return message.get("text", message.get("bytes"))


async def _close(websocket: WebSocket, code: int, reason: str | None = None) -> None:
    with contextlib.suppress(Exception):  # the peer may be gone already
        await websocket.close(code, reason)
