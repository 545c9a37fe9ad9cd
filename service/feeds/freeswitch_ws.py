"""FreeSWITCH mod_audio_stream and mod_audio_fork: `/v1/call/freeswitch`, FreeSWITCH being the
client (`uuid_audio_stream <uuid> start ws://host:8000/v1/call/freeswitch?... <mono|mixed|stereo>
<8k|16k> [metadata]`; mod_audio_fork: `uuid_audio_fork ...`, subprotocol `audio.drachtio.org`).

An optional first TEXT frame holds the metadata as JSON: `call_id`, `key` (an ingest key),
`rate`, `channels`, `track`; the same names are accepted as query parameters (the metadata wins).
A key may also come in the headers (`Authorization` Basic or Bearer, `X-API-Key`: the gate
checks those); a query key is checked at the handshake, a metadata key when it comes, within
WS_START_TIMEOUT_S. Then BINARY frames of signed 16-bit little-endian PCM at `rate` (default 8000;
multiples of 8000 up to 48000), any whole number of samples a frame, interleaved when
`channels=2`: left is the read leg (the caller, `inbound`), right the write leg (the agent,
`outbound`). A mono stream is one party's (`track`, `inbound` by default; mod_audio_stream's
`mixed` is both parties in one channel, stored as the inbound track). A zero-length binary
frame is mod_audio_fork's graceful end; later TEXT frames (mod_audio_stream's `send_text`, the
metadata of `stop`) are accepted and ignored. permessage-deflate, on by default in
mod_audio_stream, is accepted (uvicorn negotiates it when offered).
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
from service.resources import ApiResources

router = APIRouter(tags=["ingestion"])

TRANSPORT = "freeswitch"
SUBPROTOCOLS = ("audio.drachtio.org",)  # mod_audio_fork's; mod_audio_stream asks for none
PARAMETERS = ("call_id", "key", "rate", "channels", "track")
MAX_METADATA_TEXT = 16 * 1024  # core/ingestion.py keeps at most this much of it anyway
BOTH_PARTIES = (Track.INBOUND, Track.OUTBOUND)  # left, right


def _integer(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise FeedRefused(f"invalid_{name}", f"{name} must be a whole number", Refusal.POLICY)


def stream_format(params: dict[str, Any]) -> FeedFormat:
    rate, channels = _integer(params, "rate", 8000), _integer(params, "channels", 1)
    if rate % 8000 or not 8000 <= rate <= 48000:
        raise FeedRefused("invalid_rate", f"rate {rate}: a multiple of 8000 up to 48000")
    if channels not in (1, 2):
        raise FeedRefused("invalid_channels", f"channels {channels}: 1 or 2")
    try:
        return FeedFormat("slin", rate, channels)
    except UnsupportedAudio as error:
        raise FeedRefused.audio(error) from None


def parse_metadata(text: str) -> dict[str, Any]:
    if len(text) > MAX_METADATA_TEXT:
        raise FeedRefused("metadata_too_large", f"metadata past {MAX_METADATA_TEXT} characters",
                          Refusal.POLICY)  # fmt: skip
    try:
        metadata = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FeedRefused("invalid_json", "the metadata (first text frame) is not JSON") from None
    if not isinstance(metadata, dict):
        raise FeedRefused("invalid_metadata", "the metadata is not a JSON object")
    return metadata


class FreeSwitchFeed:
    def __init__(
        self, session: FeedSession, res: ApiResources, query: dict[str, str], needs_key: bool
    ) -> None:
        self.session = session
        self.res = res
        self.query = query
        self.needs_key = needs_key  # no key in the headers: one must come in the query/metadata
        self.tracks: tuple[Track, ...] = (Track.INBOUND,)

    async def handle(self, frame: object) -> bool:
        if not self.session.opened:
            await self.start(parse_metadata(frame) if isinstance(frame, str) else {})
            if isinstance(frame, str):
                return False
        if isinstance(frame, str):
            if len(frame) > MAX_METADATA_TEXT:
                raise FeedRefused("text_too_large", f"a text frame past {MAX_METADATA_TEXT} "
                                  "characters", Refusal.POLICY)  # fmt: skip
            return False  # send_text, stop's metadata: nothing Callstream keeps
        assert isinstance(frame, bytes)
        if not frame:
            return True  # mod_audio_fork's graceful end
        self.audio(frame)
        return False

    def audio(self, frame: bytes) -> bool:
        """A frame of the started stream's audio, taken as it is read (run_feed's `audio`)."""
        if not (self.session.opened and frame):
            return False
        if len(self.tracks) == 2:
            self.session.take_interleaved(frame, BOTH_PARTIES)
        else:
            self.session.take(self.tracks[0], frame)
        return True

    async def start(self, metadata: dict[str, Any]) -> None:
        params = {**self.query, **{k: metadata[k] for k in PARAMETERS if k in metadata}}
        if self.needs_key:
            key = params.get("key")
            authorize(self.res, key if isinstance(key, str) else None)
        fmt = stream_format(params)
        if fmt.channels == 2:
            self.tracks = BOTH_PARTIES
        else:
            track = params.get("track", Track.INBOUND.value)
            if track not in TRACKS:
                raise FeedRefused("invalid_track", "track must be inbound or outbound",
                                  Refusal.POLICY)  # fmt: skip
            self.tracks = (Track(track),)
        call_id = params.get("call_id")
        if not isinstance(call_id, str):
            raise FeedRefused("missing_call_id", "no call_id in the metadata or the query",
                              Refusal.POLICY)  # fmt: skip
        kept = {k: v for k, v in metadata.items() if k != "key"}  # never the key
        tracks = [t.value for t in self.tracks]
        await self.session.open(call_id, fmt, {"tracks": tracks, "freeswitch": kept})


@router.websocket("/v1/call/freeswitch")
async def freeswitch_audio(websocket: WebSocket) -> None:
    """FreeSWITCH mod_audio_stream / mod_audio_fork: metadata, then L16 frames (docs/pbx.md)."""
    if not allowed_origin(websocket):
        await websocket.close(CLOSE_POLICY, "origin not allowed")
        return
    res = get_ws_resources(websocket)
    query = dict(websocket.query_params)
    needs_key = key_needed(websocket)
    if needs_key and "key" in query:  # a key in the URL: checked before the handshake ends
        try:
            authorize(res, query["key"])
        except FeedRefused as refused:
            await refuse_handshake(websocket, refused)
            return
        needs_key = False
    offered = websocket.scope.get("subprotocols") or []
    chosen = next((p for p in offered if p in SUBPROTOCOLS), None)
    await websocket.accept(subprotocol=chosen)
    session = new_session(websocket, TRANSPORT)
    feed = FreeSwitchFeed(session, res, query, needs_key)
    await run_feed(websocket, session, feed.handle, audio=feed.audio)
