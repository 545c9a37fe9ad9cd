"""Packet ingestion over a WebSocket that speaks the Twilio Media Streams format.

`start` opens the call (its id is `start.callSid`; the start object is kept as the call's
metadata), each `media` frame is one packet of its track (`media.track`: inbound, the caller, or
outbound, the agent; inbound when absent), timestamp = media.timestamp / 1000, data = the base64
payload as sent. Its sequence: `media.chunk`, which counts per track, when the stream carries two
tracks (`start.tracks` names outbound, Twilio's both_tracks, or the frame is outbound);
otherwise `sequenceNumber`, as before tracks (it counts every message of the stream, so with two
tracks it would put a gap on each after every frame of the other).
`stop` completes the call exactly as POST /v1/call/complete does. Consecutive media frames are
buffered and stored with one Ingestion.append (one Redis round trip) when 50 are waiting or the
HOLD_S window (150 ms of a clock every stream of the process shares, service/streaming.py
store_at) that the oldest arrived in is over: every stream of the process stores in the same
loop tick, and the stores share one pipelined round trip (db/pipelining.py). The socket is a bare
ASGI endpoint (MediaSocket): a frame costs the protocol's parsing, this module's and its share of
the store, with no WebSocket object, read-ahead task or timer of its own. Under
service/ws_protocol.py (`make run`'s server) a media frame does not even wake the stream's task:
the protocol hands it to MediaStream.take_text as it is read, and the task wakes once a hold
window to store what was taken; anything else (start, stop, a frame that breaks a rule) reaches
the task in order, through `receive`, and is answered there. The socket is then read once a
window too: after a read the sink took frames in, not again until their store
(MediaStream.read_again_at), which first reads what has come (flush: caught_up), as does a
completion's. Every rule (call
id, sizes, dedup, ordering, completed calls, complete then enqueue) is core/ingestion.py's, the
same as over HTTP.

A stream must send a valid `start` within WS_START_TIMEOUT_S of opening (with its key in
`start.customParameters.token` when its handshake had none: core/access.py's rule for this
route), else it is closed 1008; once started, it holds one of its key's socket slots
(service/socket_limits.py).

A bad frame gets `{"event": "error", "code", "message"}` and the socket is closed: 1003 for data
that cannot be understood, 1008 for a policy violation (completed call, oversized payload, media
before start, no valid start in time), 1013 (try again later) for a refusal core/errors.py marks
retryable (backlog_full, not_replicated, rate_limited, redis_unavailable), 1011 for an internal
error. Packets taken in before a bad frame, or before the call's completion, are stored; a
refusal names what it refused (the frames from the first one refused on), and nothing of the
bad frame is stored. No message claims that frames were not stored where that is not known
(a Redis outage may hide a write that happened).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import math
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.routing import WebSocketRoute
from starlette.types import Message, Receive, Scope, Send

from core.access import KeyRing, Role
from core.errors import (
    INTERNAL_ERROR,
    REDIS_DOWN_STREAM,
    CallNotFound,
    CallstreamError,
    CallTooLarge,
    RedisUnavailable,
)
from core.ingestion import CALL_ID_RULE, MAX_SEQUENCE, Ingestion, check_data_size, is_call_id
from db.intake import Completion
from db.outages import REDIS_OUTAGE
from db.packets import TRACKS, NewPacket, Track
from service.asgi import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    frame_sinks,
)
from service.deps import origin_allowed, scope_resources
from service.gate import KEY_IN_START, actor_of
from service.socket_limits import SocketLimits
from service.streaming import FLUSH_AT, HOLD_S, Waiter, append_or_pause, store_at
from settings import Settings

log = logging.getLogger(__name__)

MEDIA_PATH = "/v1/call/media"


# A frame is a media packet's payload plus its envelope; anything larger is refused unread.
FRAME_ENVELOPE_BYTES = 16 * 1024

_IGNORED_EVENTS = frozenset({"connected", "mark", "dtmf"})


class Reject(Exception):
    """A frame the stream cannot accept: answered with an error frame, then the socket closes."""

    def __init__(self, code: str, message: str, close_code: int = CLOSE_UNSUPPORTED) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code

    @classmethod
    def breaking(cls, error: CallstreamError, refused: NewPacket | None = None) -> Reject:
        """A rule of core/ingestion.py that the frame broke: a policy violation, or 1013 when
        the same frames may be taken later. `refused`: the first packet the refusal concerns."""
        close_code = CLOSE_TRY_AGAIN if error.retryable else CLOSE_POLICY
        message = error.detail
        if refused is not None:
            message += (
                f" (refused: the {refused.track} frame of sequence {refused.sequence} and every "
                "frame taken in after it; the frames before it were stored)"
            )
        return cls(error.code, message, close_code)


def parse_frame(raw: str | bytes | None) -> dict[str, Any]:
    if not isinstance(raw, str):
        raise Reject("unsupported_frame", "only JSON text frames are accepted")
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Reject("invalid_json", "the frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise Reject("invalid_frame", "the frame is not a JSON object")
    return frame


def call_id_of(frame: dict[str, Any]) -> str:
    start = frame.get("start")
    call_id = start.get("callSid") if isinstance(start, dict) else None
    if not is_call_id(call_id):
        raise Reject("invalid_call_id", f"start.callSid must be {CALL_ID_RULE}", CLOSE_POLICY)
    assert isinstance(call_id, str)
    return call_id


def start_metadata(frame: dict[str, Any]) -> dict[str, Any]:
    """What the call is opened with: Twilio's start object (accountSid, streamSid, tracks,
    mediaFormat, customParameters...), kept with the call and shown in its status."""
    return {"streamSid": frame.get("streamSid"), **frame["start"]}


def _sequence(value: Any, name: str = "sequenceNumber") -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        sequence = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        sequence = value
    else:
        raise Reject("invalid_sequence", f"{name} must be a non-negative integer")
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise Reject("invalid_sequence", f"{name} must be in 0..{MAX_SEQUENCE}")
    return sequence


def _timestamp(value: Any) -> float:
    # JSON's own types (orjson builds no subclass), a bool not among them.
    kind = type(value)
    try:
        millis = float(value) if kind is str or kind is int or kind is float else math.nan
    except ValueError:
        millis = math.nan
    if not math.isfinite(millis):
        raise Reject("invalid_timestamp", "media.timestamp must be a finite number of ms")
    return millis / 1000.0


def _check_base64(payload: str) -> None:
    # strict_mode: what b64decode(validate=True) refuses (anything outside the alphabet, bad
    # padding, data after it), without its regular expression pass first.
    try:
        binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise Reject("invalid_payload", "media.payload is not valid base64") from None


_TRACK_NAMED: dict[str | None, Track] = {None: Track.INBOUND, **{t.value: t for t in TRACKS}}


def _track(value: Any) -> Track:
    try:
        return _TRACK_NAMED[value]
    except (KeyError, TypeError):  # TypeError: an object or an array, which cannot be a key
        raise Reject("invalid_track", "media.track must be inbound or outbound") from None


def two_tracks(start: dict[str, Any]) -> bool:
    """Whether the stream carries both parties (Twilio's both_tracks; outbound_track alone
    counts as the second track too)."""
    tracks = start.get("tracks")
    return isinstance(tracks, list) and Track.OUTBOUND.value in tracks


def media_packet(frame: dict[str, Any], limit: int, both: bool = False) -> NewPacket:
    """A media frame as a packet; `both`: the stream has two tracks (see the module's doc)."""
    media = frame.get("media")
    if not isinstance(media, dict):
        raise Reject("invalid_media", "a media frame needs a media object")
    track = _track(media.get("track"))
    chunk = media.get("chunk")
    if (both or track is Track.OUTBOUND) and chunk is not None:
        sequence = _sequence(chunk, "media.chunk")
    else:
        sequence = _sequence(frame.get("sequenceNumber"))
    timestamp = _timestamp(media.get("timestamp"))
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise Reject("invalid_payload", "media.payload must be a base64 string")
    packet = NewPacket(sequence, timestamp, payload, track)
    try:
        check_data_size(packet, limit)  # before decoding: an oversized payload is not worth it
    except CallstreamError as error:
        raise Reject.breaking(error) from None
    _check_base64(payload)
    return packet


class MediaStream:
    """One socket's state: the call it carries and the packets not yet stored."""

    def __init__(
        self, scope: Scope, send: Send, ingestion: Ingestion, keys: KeyRing, sockets: SocketLimits
    ) -> None:
        self.scope = scope
        self.send = send
        self.ingestion = ingestion
        self.keys = keys
        self.sockets = sockets
        # Whether the key comes in start.customParameters.token (the gate saw none).
        self.key_in_start = bool(scope.get(KEY_IN_START))
        # Released when the stream ends: its key's socket slot (once start brought the key),
        # its registration with Ingestion.held (once started).
        self.ends = contextlib.ExitStack()
        self.limit = ingestion.limits.max_packet_data_bytes
        # Past this, a text frame is refused unparsed.
        self.largest = self.limit * 2 + FRAME_ENVELOPE_BYTES
        self.call_id: str | None = None
        self.both_tracks = False
        self.buffer: list[NewPacket] = []
        self._clock = asyncio.get_running_loop().time
        self.last_frame = self._clock()
        self.store_by = 0.0  # when the packets held are stored (streaming.store_at)
        self.waiter: Waiter | None = None  # while run() reads the socket
        # The server's sink for text frames (service/ws_protocol.py), when it has one.
        self.sinks = frame_sinks(scope)
        # One store at a time: a completion's (Ingestion.held) waits for the one in flight.
        self._storing = asyncio.Lock()
        self.failed: Reject | None = None  # what storing for a completion ran into

    async def flush(self) -> None:
        async with self._storing:
            if self.sinks is not None:
                await self.sinks.caught_up()  # what the socket holds goes with this store
            if not self.buffer or self.call_id is None:
                return
            packets, self.buffer = self.buffer, []
            await self._store(self.call_id, packets)

    async def _store(self, call_id: str, packets: list[NewPacket]) -> None:
        """Store `packets` in one round trip; refused, store those the refusal does not concern
        and raise the Reject naming the first it does."""
        try:
            await append_or_pause(self.ingestion, call_id, packets)
        except CallTooLarge as error:
            if len(packets) == 1:
                raise Reject.breaking(error, packets[0]) from None
            # The batch as a whole passes the call's cap: those that fit are stored, one by
            # one (a rare path: the call's end), up to the first that does not.
            for index, packet in enumerate(packets):
                try:
                    await self.ingestion.append(call_id, [packet])
                except CallstreamError as refused:
                    raise Reject.breaking(refused, packets[index]) from None
        except CallstreamError as error:
            raise Reject.breaking(error, packets[0]) from None

    async def store_for_completion(self) -> None:
        """Ingestion.held's hook: the frames taken in so far go before the call's completion.
        What goes wrong is kept for the stream's client (the completion goes on)."""
        try:
            await self.flush()
        except Reject as refused:
            self.failed = refused
        except REDIS_OUTAGE:
            self.failed = Reject(RedisUnavailable.code, REDIS_DOWN_STREAM, CLOSE_TRY_AGAIN)
        except Exception:
            log.exception("media stream %s: storing before its completion failed", self.call_id)
            self.failed = Reject("internal_error", INTERNAL_ERROR, CLOSE_INTERNAL)
        if self.failed is not None and self.waiter is not None:
            self.waiter.wake_by(self._clock())  # the stream answers it now, not at its next frame

    def hold(self, packet: NewPacket) -> None:
        """Hold a packet until its window's store (or FLUSH_AT held)."""
        if not self.buffer:
            self.store_by = store_at(self.last_frame)
            if self.waiter is not None:
                self.waiter.wake_by(self.store_by)
        self.buffer.append(packet)

    def read_again_at(self) -> float | None:
        """When the protocol reads the socket again after a read the sink took frames in: when
        they are stored (the end of their hold window), so that a window's frames come in one
        read (service/ws_protocol.py); flush() reads what has come first. At most HOLD_S on."""
        if not self.buffer:
            return None
        return min(self.store_by, self._clock() + HOLD_S)

    def take_text(self, text: str) -> bool:
        """service/ws_protocol.py's sink (TextSink): a media frame of the started stream, taken
        as the protocol reads it, without waking the stream's task. Anything else is declined,
        to reach run() in order and be answered there: another event, a frame that breaks a rule
        (parsed again there, it is refused the same way), or a frame past FLUSH_AT held (run()
        stores then)."""
        if len(self.buffer) >= FLUSH_AT or len(text) > self.largest:
            return False
        try:
            frame = orjson.loads(text)
            if type(frame) is not dict or frame.get("event") != "media":
                return False
            packet = media_packet(frame, self.limit, self.both_tracks)
        except Exception:  # a sink must not raise: run() meets the frame and answers it
            return False
        self.last_frame = self._clock()
        self.hold(packet)
        return True

    async def handle(self, frame: dict[str, Any]) -> bool:
        """Take one frame; True when the stream is over (stop)."""
        event = frame.get("event")
        if event == "media":
            if self.call_id is None:
                raise Reject("not_started", "media before start", CLOSE_POLICY)
            self.hold(media_packet(frame, self.limit, self.both_tracks))
            return False
        if event == "start":
            await self.start(frame)
            return False
        if event == "stop":
            await self.stop()
            return True
        if isinstance(event, str) and event in _IGNORED_EVENTS:
            return False
        raise Reject("unknown_event", f"unknown event {str(event)[:64]!r}")

    async def start(self, frame: dict[str, Any]) -> None:
        if self.call_id is not None:
            raise Reject("already_started", "the stream was already started", CLOSE_POLICY)
        call_id = call_id_of(frame)
        try:
            metadata = start_metadata(frame)
            if self.key_in_start:  # nothing is stored before the stream is authenticated
                principal = self.keys.authorize(_start_token(metadata), Role.INGEST)
                self.ends.callback((await self.sockets.admit(principal)).release)
                metadata = _without_token(metadata)
            await self.ingestion.open_call(call_id, metadata)
        except CallstreamError as error:
            raise Reject.breaking(error) from None
        self.both_tracks = two_tracks(frame["start"])
        self.call_id = call_id
        self.ends.enter_context(self.ingestion.held.holding(call_id, self.store_for_completion))
        if self.sinks is not None:  # opened by run() once this frame is handled
            self.sinks.attach(self.take_text, self.read_again_at)
            self.ends.callback(self.sinks.attach, None)

    async def stop(self) -> None:
        """Flush, then the same path as POST /v1/call/complete."""
        if self.call_id is None:
            raise Reject("not_started", "stop before start", CLOSE_POLICY)
        await self.flush()
        actor = actor_of(self.scope)
        if await self.ingestion.complete(self.call_id, actor=actor) is Completion.UNKNOWN:
            error = CallNotFound(f"call {self.call_id} has never sent a packet")
            raise Reject.breaking(error)

    async def run(self, receive: Receive, idle_timeout_s: float, start_timeout_s: float) -> None:
        """Take the socket's messages straight off the server's `receive` until the stream
        ends (and, under service/ws_protocol.py, the media frames its sink took meanwhile). No
        read-ahead: while a store is in flight nothing reads the socket past FLUSH_AT frames held
        (the sink declines more, and the server stops reading a socket once --ws-max-queue
        messages wait to be received), so a fast peer is held back by TCP, with at most what
        one read brought in memory."""
        clock = self._clock
        self.last_frame = clock()
        start_by = self.last_frame + start_timeout_s
        self.waiter = waiter = Waiter(receive)
        try:
            while True:
                if self.failed is not None:
                    raise self.failed
                try:
                    message = await waiter.receive(self._deadline(start_by, idle_timeout_s))
                except TimeoutError:
                    if self.failed is None:
                        await self._quiet(start_by, start_timeout_s, idle_timeout_s)
                    continue
                if message["type"] != "websocket.receive":  # websocket.disconnect
                    await self.flush()
                    return
                self.last_frame = clock()
                if await self.handle(parse_frame(self._text_of(message))):
                    await self.close(CLOSE_NORMAL)
                    return
                # Store when enough is waiting, or when the window the oldest fell in is over: the
                # next frames wait in the socket while this round trip is in flight.
                if len(self.buffer) >= FLUSH_AT or (self.buffer and clock() >= self.store_by):
                    await self.flush()
                if self.sinks is not None:
                    self.sinks.reopen()  # this message is handled: the sink may take the next
        finally:
            self.waiter = None
            waiter.close()

    def _text_of(self, message: Message) -> str:
        raw = message.get("text")
        if raw is None:
            raise Reject("unsupported_frame", "only JSON text frames are accepted")
        if len(raw) > self.largest:
            raise Reject(
                "frame_too_large", "the frame is larger than a media frame can be", CLOSE_TOO_BIG
            )
        assert isinstance(raw, str)
        return raw

    async def _quiet(self, start_by: float, start_timeout_s: float, idle_timeout_s: float) -> None:
        """The wait's deadline passed: store what is held, or close a stream that has not
        started in time (1008) or gone quiet (1001). Frames the sink took count as frames; a
        deadline that finds nothing to do (a completion stored what was held) waits on."""
        now = self._clock()
        if self.buffer:
            await self.flush()
        elif self.call_id is None and now >= start_by:
            raise Reject(
                "start_timeout",
                f"no valid start within {start_timeout_s:g}s of opening (WS_START_TIMEOUT_S)",
                CLOSE_POLICY,
            )
        elif now - self.last_frame >= idle_timeout_s:
            raise Reject("idle_timeout", f"no frame for {idle_timeout_s:g}s", CLOSE_GOING_AWAY)

    def _deadline(self, start_by: float, idle_timeout_s: float) -> float:
        """Until when to wait for the next frame (the loop's clock): held packets wait at most
        until they are stored (HOLD_S); with nothing held, the idle timeout, and before start
        the start timeout."""
        if self.buffer:
            return self.store_by
        idle_by = self.last_frame + idle_timeout_s
        return idle_by if self.call_id is not None else min(idle_by, start_by)

    async def reject(self, code: str, message: str, close_code: int) -> None:
        with contextlib.suppress(Exception):
            frame = {"event": "error", "code": code, "message": message}
            await self.send({"type": "websocket.send", "text": orjson.dumps(frame).decode()})
        await self.close(close_code)

    async def close(self, code: int) -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.send({"type": "websocket.close", "code": code, "reason": ""})


def _start_token(metadata: dict[str, Any]) -> str | None:
    params = metadata.get("customParameters")
    token = params.get("token") if isinstance(params, dict) else None
    return token if isinstance(token, str) else None


def _without_token(metadata: dict[str, Any]) -> dict[str, Any]:
    """The start message as kept with the call: never with the key in it."""
    params = {k: v for k, v in metadata["customParameters"].items() if k != "token"}
    return {**metadata, "customParameters": params}


class MediaSocket:
    """Twilio Media Streams (connected, start, media..., stop) as a bare ASGI endpoint: every
    message is taken straight off the server's `receive`, with no WebSocket object around it
    and no reader task between (BENCHMARKS.md, Real-time capacity). Routed by FastAPI like any
    route (a Starlette WebSocketRoute whose endpoint is this ASGI app), behind the gate."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        res = scope_resources(scope)
        if not origin_allowed(scope, res.settings.ws_allowed_origins):
            # Closing before the handshake refuses it: HTTP 403 to the client.
            await send(
                {"type": "websocket.close", "code": CLOSE_POLICY, "reason": "origin not allowed"}
            )
            return
        if (await receive())["type"] != "websocket.connect":
            return  # the client went away before its handshake was answered
        await send({"type": "websocket.accept"})
        stream = MediaStream(scope, send, res.ingestion, res.keys, res.sockets)
        try:
            await _serve(stream, receive, res.settings)
        finally:
            stream.ends.close()


router = APIRouter(tags=["ingestion"], routes=[WebSocketRoute(MEDIA_PATH, MediaSocket())])


async def _serve(stream: MediaStream, receive: Receive, settings: Settings) -> None:
    """Run the stream to its end, answering its failure with an error frame and a close."""
    try:
        try:
            await stream.run(receive, settings.ws_idle_timeout_s, settings.ws_start_timeout_s)
        except Reject as rejected:
            # Packets taken in before the bad frame are kept; a failing store reports its own
            # error.
            error = rejected
            try:
                await stream.flush()
            except Reject as flush_failed:
                error = flush_failed
            await stream.reject(error.code, error.message, error.close_code)
    except REDIS_OUTAGE as exc:
        log.warning("Redis unavailable during media stream %s: %r", stream.call_id, exc)
        await stream.reject(RedisUnavailable.code, REDIS_DOWN_STREAM, CLOSE_TRY_AGAIN)
    except Exception:
        log.exception("media stream %s failed", stream.call_id)
        await stream.reject("internal_error", INTERNAL_ERROR, CLOSE_INTERNAL)
