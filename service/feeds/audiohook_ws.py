"""Genesys Cloud AudioHook, protocol version 2: `/v1/call/audiohook`, Genesys being the client
(wss:// through the TLS proxy in front of the API, docs/pbx.md).

The upgrade carries `Audiohook-Organization-Id`, `Audiohook-Session-Id`,
`Audiohook-Correlation-Id` and `X-API-KEY` (an ingest key: the gate checks it). With
AUDIOHOOK_CLIENT_SECRET set, its HTTP message signature must verify and be fresh
(service/feeds/signature.py), else 401.

Text messages are `{"version": "2", "id", "type", "seq", "serverseq"/"clientseq", "position",
"parameters"}`; each of the client's `seq` is the one before plus one, and each of ours says in
`clientseq` the last we received. `open` is answered `opened` choosing PCMU 8000 with channels
`["external", "internal"]` when offered (else one channel of PCMU, else no media: the call
carries no audio); `ping` gets `pong`, `update` `updated`, `close` `closed` (then the session is
over). `paused` then `resumed`, and `discarded`, keep the timeline: the audio not sent is silence
up to `start` + `discarded` of their parameters. Binary frames are the chosen channels' μ-law
bytes, interleaved: external (the customer, `inbound`, left) and internal (the agent, `outbound`,
right). The call id is the open's `conversationId`.

A sequence gap, a message whose `id` is not the session's, a text over 64 KB, audio outside an
open session, or anything else the feed refuses gets `disconnect` with reason `error` and an
`info` saying why, then the socket closes (what came before is stored).
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket

from core.errors import CallstreamError, Unauthenticated, UnreadableBody
from db.packets import Track
from service.asgi import CLOSE_POLICY
from service.deps import get_ws_resources
from service.feeds.session import FeedRefused, FeedSession, Refusal
from service.feeds.signature import BadSignature, verify
from service.feeds.timeline import FeedFormat
from service.feeds.websocket import allowed_origin, deny, key_needed, new_session, run_feed
from settings import Settings

router = APIRouter(tags=["ingestion"])

TRANSPORT = "audiohook"
VERSION = "2"
MAX_TEXT_BYTES = 64 * 1024
CHANNELS = {"external": Track.INBOUND, "internal": Track.OUTBOUND}
# The media we take, best first: both parties, then either alone.
PREFERRED = (["external", "internal"], ["external"], ["internal"])
_DURATION = re.compile(r"PT(\d{1,9}(?:\.\d{1,9})?)S")
SESSION_HEADERS = ("audiohook-organization-id", "audiohook-session-id", "audiohook-correlation-id")


def duration_s(value: object, name: str) -> float:
    """An ISO 8601 duration in seconds, as AudioHook writes positions: `PT12.34S`."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise FeedRefused("invalid_duration", f"{name} must be a duration such as PT1.5S")
    return float(match.group(1))


def choose_media(offers: object) -> dict[str, Any] | None:
    """The offer we take (PCMU at 8000 Hz, both channels if offered), or None."""
    if not isinstance(offers, list):
        return None
    for channels in PREFERRED:
        for offer in offers:
            if (
                isinstance(offer, dict)
                and offer.get("type") == "audio"
                and offer.get("format") == "PCMU"
                and offer.get("rate") == 8000
                and offer.get("channels") == channels
            ):
                return offer
    return None


class AudioHookFeed:
    def __init__(self, websocket: WebSocket, session: FeedSession, headers: dict[str, str]):
        self.websocket = websocket
        self.session = session
        self.session_id = headers["audiohook-session-id"]
        self.headers = headers
        self.client_seq = 0  # the last seq the client sent
        self.server_seq = 0  # the last seq we sent
        self.tracks: tuple[Track, ...] = ()
        self.opened = False

    async def send(self, kind: str, parameters: dict[str, Any]) -> None:
        self.server_seq += 1
        message = {"version": VERSION, "type": kind, "seq": self.server_seq,
                   "clientseq": self.client_seq, "id": self.session_id,
                   "parameters": parameters}  # fmt: skip
        await self.websocket.send_text(orjson.dumps(message).decode())

    async def disconnect(self, refused: FeedRefused) -> None:
        """Every refusal is said as AudioHook's `disconnect`, reason `error`."""
        await self.send(
            "disconnect", {"reason": "error", "info": f"{refused.code}: {refused.message}"}
        )

    async def handle(self, frame: object) -> bool:
        if isinstance(frame, bytes):
            if not self.audio(frame):
                raise FeedRefused("audio_outside_open", "audio outside an open session with "
                                  "media", Refusal.POLICY)  # fmt: skip
            return False
        assert isinstance(frame, str)
        if len(frame) > MAX_TEXT_BYTES:
            raise FeedRefused("message_too_large", f"a text message past {MAX_TEXT_BYTES} bytes",
                              Refusal.POLICY)  # fmt: skip
        message = self.checked(frame)
        parameters = message.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else {}
        kind = message["type"]
        if kind == "open":
            await self.open(parameters)
        elif kind == "ping":
            await self.send("pong", {})
        elif kind == "update":
            await self.send("updated", {})
        elif kind == "close":
            await self.send("closed", {})
            return True
        elif kind in ("resumed", "discarded"):
            start = duration_s(parameters.get("start"), "start")
            skipped = duration_s(parameters.get("discarded"), "discarded")
            for track in self.tracks:  # what was not sent is silence at its position
                self.session.skip_to(track, start + skipped)
        return False  # paused, error, and what a later version adds: nothing to store

    def checked(self, text: str) -> dict[str, Any]:
        """The message, once its envelope is AudioHook v2's and its seq the next."""
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise FeedRefused("invalid_json", "a text message that is not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise FeedRefused("invalid_message", "a message needs a type")
        if message.get("version") != VERSION:
            raise FeedRefused("unsupported_version", f"protocol version {VERSION} only")
        if message.get("id") != self.session_id:
            raise FeedRefused("session_mismatch", "the message's id is not this session's",
                              Refusal.POLICY)  # fmt: skip
        seq = message.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq != self.client_seq + 1:
            raise FeedRefused("sequence_gap", f"seq {seq!r} after {self.client_seq}",
                              Refusal.POLICY)  # fmt: skip
        self.client_seq = seq
        return message

    async def open(self, parameters: dict[str, Any]) -> None:
        if self.opened:
            raise FeedRefused("already_open", "a second open", Refusal.POLICY)
        call_id = parameters.get("conversationId")
        if not isinstance(call_id, str):
            raise FeedRefused("invalid_call_id", "open has no conversationId", Refusal.POLICY)
        await self.session.join(call_id)
        chosen = choose_media(parameters.get("media"))
        self.opened = True
        if chosen is None:  # no media we can take: the session goes on without audio
            await self.send("opened", {"media": []})
            return
        self.tracks = tuple(CHANNELS[name] for name in chosen["channels"])
        kept = {
            "organizationId": parameters.get("organizationId"),
            "conversationId": call_id,
            "sessionId": self.session_id,
            "correlationId": self.headers.get("audiohook-correlation-id"),
            "language": parameters.get("language"),
            "media": chosen,
        }
        await self.session.open(
            call_id,
            FeedFormat("mulaw", 8000, len(self.tracks)),
            {"tracks": [t.value for t in self.tracks], "audiohook": kept},
        )
        await self.send("opened", {"media": [chosen]})

    def audio(self, frame: bytes) -> bool:
        """A frame of the open session's audio (False outside one with media); taken as it is
        read too (run_feed's `audio`)."""
        if not self.tracks:
            return False
        if len(self.tracks) == 2:
            self.session.take_interleaved(frame, (self.tracks[0], self.tracks[1]))
        else:
            self.session.take(self.tracks[0], frame)
        return True


def check_upgrade(
    websocket: WebSocket, settings: Settings, headers: dict[str, str]
) -> CallstreamError | None:
    """What is wrong with the upgrade, if anything (answered as HTTP)."""
    missing = [name for name in SESSION_HEADERS if not headers.get(name)]
    if missing:
        return UnreadableBody(f"an AudioHook upgrade carries {', '.join(missing)}")
    if key_needed(websocket):
        return Unauthenticated("AudioHook's X-API-KEY header is missing")
    secret = settings.audiohook_client_secret.get_secret_value()
    if secret:
        target = websocket.scope["raw_path"].decode("latin-1")
        if websocket.scope.get("query_string"):
            target += "?" + websocket.scope["query_string"].decode("latin-1")
        try:
            verify(headers, target, base64.b64decode(secret), time.time())
        except BadSignature as bad:
            return Unauthenticated(f"the AudioHook signature is refused: {bad}")
    return None


@router.websocket("/v1/call/audiohook")
async def audiohook(websocket: WebSocket) -> None:
    """Genesys AudioHook v2: open/opened, then interleaved PCMU frames (docs/pbx.md)."""
    if not allowed_origin(websocket):
        await websocket.close(CLOSE_POLICY, "origin not allowed")
        return
    headers = {k.lower(): v for k, v in websocket.headers.items()}
    refused = check_upgrade(websocket, get_ws_resources(websocket).settings, headers)
    if refused is not None:
        await deny(websocket, refused)
        return
    await websocket.accept()
    session = new_session(websocket, TRANSPORT)
    feed = AudioHookFeed(websocket, session, headers)
    await run_feed(websocket, session, feed.handle, feed.disconnect, feed.audio)
