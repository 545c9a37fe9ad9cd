"""Asterisk chan_websocket (Asterisk 20.16+, 21.11+, 22.6+; JSON control messages 20.18+):
`/v1/call/asterisk`, Asterisk being the client (websocket_client.conf: `uri`, `protocols=media`,
`username`/`password`: HTTP Basic, the password an ingest key; the gate checks it).

The answer carries subprotocol `media` and no `Sec-WebSocket-Extensions` (Asterisk's client
offers none and aborts on one). The first message is TEXT `MEDIA_START`, plain
(`MEDIA_START connection_id:... channel:... channel_id:... format:ulaw optimal_frame_size:160
ptime:20`) or JSON (`{"event": "MEDIA_START", ...}`); then BINARY frames of the raw codec bytes
`format` names, with no header, sequence or timestamp (each frame one track's audio, cut into 20
ms packets here); other TEXT events (`DTMF_END`, `STATUS`, `MEDIA_XOFF`...) are accepted and
ignored. Asterisk ends the call by closing the socket.

Query parameters (Asterisk appends the dial string's `v(...)`): `call_id` (default: MEDIA_START's
`channel_id`) and `track` (`inbound`, the default, or `outbound`): two sockets of one `call_id`
are one two-party call.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, WebSocket

from core.audio import UnsupportedAudio
from db.packets import TRACKS, Track
from service.asgi import CLOSE_POLICY
from service.deps import get_ws_resources
from service.feeds.session import FeedRefused, FeedSession, Refusal
from service.feeds.timeline import FeedFormat
from service.feeds.websocket import (
    allowed_origin,
    authorize,
    key_needed,
    new_session,
    refuse_handshake,
    run_feed,
)

router = APIRouter(tags=["ingestion"])

TRANSPORT = "asterisk"
SUBPROTOCOL = "media"
# Asterisk's format names (format_cache.c) for what we can store.
FORMATS: dict[str, tuple[str, int]] = {
    "ulaw": ("mulaw", 8000),
    "alaw": ("alaw", 8000),
    "slin": ("slin", 8000),
    "slin12": ("slin", 12000),
    "slin16": ("slin", 16000),
    "slin24": ("slin", 24000),
    "slin32": ("slin", 32000),
    "slin44": ("slin", 44100),
    "slin48": ("slin", 48000),
}
# What MEDIA_START says of the channel and is kept with the call (never its channel variables).
KEPT = ("connection_id", "channel", "channel_id", "format", "optimal_frame_size", "ptime")
MAX_TEXT_BYTES = 64 * 1024


def parse_media_start(text: str) -> dict[str, Any] | None:
    """MEDIA_START's fields (plain `name:value` words or JSON), else None (another event)."""
    if text.lstrip().startswith("{"):
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise FeedRefused("invalid_json", "a JSON control message that is not JSON") from None
        if not isinstance(event, dict) or event.get("event") != "MEDIA_START":
            return None
        return event
    words = text.split()
    if not words or words[0] != "MEDIA_START":
        return None
    fields: dict[str, Any] = {}
    for word in words[1:]:
        name, colon, value = word.partition(":")
        if colon:
            fields[name] = value
    return fields


def feed_format(fields: dict[str, Any]) -> FeedFormat:
    name = fields.get("format")
    if not isinstance(name, str) or name not in FORMATS:
        known = ", ".join(FORMATS)
        raise FeedRefused("unsupported_format", f"format {str(name)[:32]!r}; supported: {known}")
    codec, rate = FORMATS[name]
    try:
        return FeedFormat(codec, rate)  # type: ignore[arg-type]
    except UnsupportedAudio as error:
        raise FeedRefused.audio(error) from None


class AsteriskFeed:
    def __init__(self, session: FeedSession, query: dict[str, str]) -> None:
        self.session = session
        self.query = query
        self.track = Track.INBOUND

    def audio(self, frame: bytes) -> bool:
        """A frame of the started channel's audio, taken as it is read (run_feed's `audio`)."""
        if not (self.session.opened and frame):
            return False
        self.session.take(self.track, frame)
        return True

    async def handle(self, frame: object) -> bool:
        if isinstance(frame, bytes):
            if not self.session.opened:
                raise FeedRefused("not_started", "media before MEDIA_START", Refusal.POLICY)
            self.audio(frame)
            return False
        if not isinstance(frame, str):
            return False
        if len(frame) > MAX_TEXT_BYTES:
            raise FeedRefused("frame_too_large", f"a text message past {MAX_TEXT_BYTES} bytes",
                              Refusal.POLICY)  # fmt: skip
        fields = parse_media_start(frame)
        if fields is None:
            return False  # DTMF_END, STATUS, MEDIA_XOFF...: nothing Callstream keeps
        if self.session.opened:
            raise FeedRefused("already_started", "a second MEDIA_START", Refusal.POLICY)
        await self.start(fields)
        return False

    async def start(self, fields: dict[str, Any]) -> None:
        track = self.query.get("track", Track.INBOUND.value)
        if track not in TRACKS:
            raise FeedRefused("invalid_track", "track must be inbound or outbound", Refusal.POLICY)
        self.track = Track(track)
        fmt = feed_format(fields)
        call_id = self.query.get("call_id") or fields.get("channel_id")
        if not isinstance(call_id, str):
            raise FeedRefused("invalid_call_id", "no call_id and no channel_id", Refusal.POLICY)
        kept = {name: fields[name] for name in KEPT if name in fields}
        await self.session.open(call_id, fmt, {"track": self.track.value, "asterisk": kept})


@router.websocket("/v1/call/asterisk")
async def asterisk_media(websocket: WebSocket) -> None:
    """Asterisk chan_websocket: MEDIA_START, then raw codec frames (docs/pbx.md)."""
    if not allowed_origin(websocket):
        await websocket.close(CLOSE_POLICY, "origin not allowed")
        return
    if key_needed(websocket):  # chan_websocket always sends its key (Basic): a missing one is
        try:  # refused at the handshake, as the gate refuses a wrong one
            authorize(get_ws_resources(websocket), None)
        except FeedRefused as refused:
            await refuse_handshake(websocket, refused)
            return
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    session = new_session(websocket, TRANSPORT)
    feed = AsteriskFeed(session, dict(websocket.query_params))
    await run_feed(websocket, session, feed.handle, audio=feed.audio)
