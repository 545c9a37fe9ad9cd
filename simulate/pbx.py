"""Peer clients of the PBX feeds, each written from its protocol's own definition (not from
Callstream's code), byte for byte as the PBX sends it: the tests and `callstream simulate
--transport audiosocket|asterisk|freeswitch|audiohook` both use them, so anyone can see a feed
work without a PBX.

- AudioSocket: Asterisk's include/asterisk/res_audiosocket.h (kinds) and res/res_audiosocket.c
  (ast_audiosocket_init: kind 0x01, length 16, the UUID's bytes; ast_audiosocket_send_frame:
  kind, htons(length), payload).
- chan_websocket: Asterisk's channels/chan_websocket.c (MEDIA_START, plain or JSON; binary
  frames of optimal_frame_size raw codec bytes) and res/res_http_websocket.c's client handshake
  (`Authorization: Basic`, `Sec-WebSocket-Protocol: media`, no extensions offered).
- FreeSWITCH: mod_audio_stream's README (`uuid_audio_stream <uuid> start <url> <mono|mixed|
  stereo> <8k|16k> <metadata>`: the metadata as the first text frame, then L16 frames, stereo
  interleaved caller then callee; permessage-deflate on by default) and mod_audio_fork's
  (subprotocol `audio.drachtio.org`; a zero-length binary frame at a graceful end).
- Genesys AudioHook v2: the protocol's published message definitions (purecloudlabs'
  audiohook-reference-implementation, protocol/message.ts: version, id, type, seq, serverseq,
  position, parameters; open/opened, ping/pong, paused/resumed, close/closed) and its upgrade
  signature (draft-ietf-httpbis-message-signatures, hmac-sha256 over the components it lists).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

# AudioSocket message kinds (enum ast_audiosocket_msg_kind).
AS_HANGUP = 0x00
AS_UUID = 0x01
AS_DTMF = 0x03
AS_AUDIO = 0x10  # slin 8 kHz from the dialplan application; the channel's codec otherwise
AS_SLIN_KINDS = {12000: 0x11, 16000: 0x12, 24000: 0x13, 32000: 0x14, 44100: 0x15, 48000: 0x16,
                 96000: 0x17, 192000: 0x18}  # fmt: skip
AS_ERROR = 0xFF
ANSWER_TIMEOUT_S = 10.0


def audiosocket_message(kind: int, payload: bytes = b"") -> bytes:
    """kind, then the payload's length as 16 bits in network order, then the payload."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


class AudioSocketPeer:
    """Asterisk's side of one AudioSocket connection (one party of a call)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int) -> AudioSocketPeer:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_uuid(self, call: uuid.UUID) -> None:
        await self.send(audiosocket_message(AS_UUID, call.bytes))

    async def send_audio(self, audio: bytes, frame_bytes: int, kind: int = AS_AUDIO) -> None:
        """`audio` as messages of `frame_bytes` (320: 20 ms of 8 kHz slin), the last shorter."""
        for at in range(0, len(audio), frame_bytes):
            await self.send(audiosocket_message(kind, audio[at : at + frame_bytes]))

    async def hangup(self) -> None:
        await self.send(audiosocket_message(AS_HANGUP))

    async def answer(self) -> bytes:
        """Everything the server sends until it closes the connection (or resets it: a server
        closing with our bytes unread; a write of ours that met the reset breaks the pipe)."""
        received = b""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                while chunk := await self.reader.read(4096):
                    received += chunk
        return received

    def drop(self) -> None:
        """The connection lost mid-call (a reset, no goodbye)."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def closing(ws: ClientConnection) -> tuple[int | None, str]:
    """Wait for the server to close the socket (what it sent meanwhile is dropped): its close
    code and reason."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            async for _ in ws:
                pass
    return ws.close_code, ws.close_reason or ""


def basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class AsteriskWebSocketPeer:
    """Asterisk's chan_websocket calling out to `/v1/call/asterisk` (one channel: one party)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def connect(
        cls, url: str, params: dict[str, str] | None = None, password: str | None = None
    ) -> AsteriskWebSocketPeer:
        """`params`: the dial string's v(...) URI parameters (call_id, track); `password`:
        websocket_client.conf's (an ingest key), sent as HTTP Basic."""
        headers = {"Authorization": basic_auth("asterisk", password)} if password else {}
        query = f"?{urlencode(params)}" if params else ""
        ws = await connect(
            url + query,
            subprotocols=[Subprotocol("media")],
            additional_headers=headers,
            compression=None,
        )
        return cls(ws)

    async def media_start(
        self, channel_id: str, fmt: str = "ulaw", frame_size: int = 160, as_json: bool = False
    ) -> None:
        """MEDIA_START as _create_event_MEDIA_START prints it (plain text, or JSON)."""
        fields: dict[str, Any] = {
            "connection_id": str(uuid.uuid4()),
            "channel": f"WebSocket/callstream/{channel_id}",
            "channel_id": channel_id,
            "format": fmt,
            "optimal_frame_size": frame_size,
            "ptime": 20,
        }
        if as_json:
            text = json.dumps({"event": "MEDIA_START", **fields, "channel_variables": {}})
        else:
            text = "MEDIA_START " + " ".join(f"{name}:{value}" for name, value in fields.items())
        await self.ws.send(text)

    async def send_audio(self, audio: bytes, frame_size: int) -> None:
        for at in range(0, len(audio), frame_size):
            await self.ws.send(audio[at : at + frame_size])

    async def close(self) -> tuple[int | None, str]:
        """Asterisk hangs up: it closes the socket."""
        await self.ws.close()
        return self.ws.close_code, self.ws.close_reason or ""


class FreeSwitchPeer:
    """FreeSWITCH's media bug streaming a channel to `/v1/call/freeswitch`."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def connect(
        cls,
        url: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        fork: bool = False,
    ) -> FreeSwitchPeer:
        """`fork`: mod_audio_fork (its subprotocol), else mod_audio_stream (with compression,
        its default)."""
        query = f"?{urlencode(params)}" if params else ""
        ws = await connect(
            url + query,
            subprotocols=[Subprotocol("audio.drachtio.org")] if fork else None,
            additional_headers=headers or {},
            compression=None if fork else "deflate",
        )
        return cls(ws)

    async def metadata(self, fields: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(fields))

    async def send_audio(self, pcm: bytes, frame_bytes: int) -> None:
        """L16 little-endian (interleaved for stereo) in frames of `frame_bytes`."""
        for at in range(0, len(pcm), frame_bytes):
            await self.ws.send(pcm[at : at + frame_bytes])

    async def end(self) -> tuple[int | None, str]:
        """mod_audio_fork's graceful end: a zero-length binary frame, then the server closes."""
        await self.ws.send(b"")
        return await closing(self.ws)

    async def close(self) -> tuple[int | None, str]:
        await self.ws.close()
        return self.ws.close_code, self.ws.close_reason or ""


AUDIOHOOK_SIGNED = ("@request-target", "@authority", "audiohook-organization-id",
                    "audiohook-session-id", "audiohook-correlation-id", "x-api-key")  # fmt: skip
PCMU_BOTH = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}


def audiohook_signature(
    headers: dict[str, str], request_target: str, secret: bytes, created: int
) -> dict[str, str]:
    """Signature-Input and Signature for an upgrade, as Genesys signs it."""
    values = {"@request-target": request_target, "@authority": headers["host"],
              **{name: headers[name] for name in AUDIOHOOK_SIGNED[2:]}}  # fmt: skip
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    listed = " ".join(f'"{name}"' for name in AUDIOHOOK_SIGNED)
    params = (f'({listed});keyid="{headers["x-api-key"]}";nonce="{nonce}";alg="hmac-sha256";'
              f"created={created};expires={created + 10}")  # fmt: skip
    base = "\n".join([*(f'"{n}": {values[n]}' for n in AUDIOHOOK_SIGNED),
                      f'"@signature-params": {params}'])  # fmt: skip
    digest = hmac.new(secret, base.encode(), hashlib.sha256).digest()
    return {
        "signature-input": f"sig1={params}",
        "signature": f"sig1=:{base64.b64encode(digest).decode()}:",
    }


def duration(seconds: float) -> str:
    return f"PT{seconds:.3f}S"


class AudioHookPeer:
    """Genesys Cloud's AudioHook client: one session of one conversation, both parties."""

    def __init__(self, ws: ClientConnection, session_id: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self.seq = 0  # ours
        self.serverseq = 0  # the last the server sent
        self.position_s = 0.0  # of the audio sent (both channels advance together)

    @classmethod
    async def connect(
        cls,
        url: str,
        api_key: str,
        secret: bytes | None = None,
        created: int | None = None,
        session_id: str | None = None,
        sign_as: str | None = None,
    ) -> AudioHookPeer:
        """`secret`: sign the upgrade (created now, or `created`); `sign_as`: the host to sign
        for (else the URL's)."""
        session_id = session_id or str(uuid.uuid4())
        host = url.split("://", 1)[1].split("/", 1)[0]
        target = "/" + url.split("://", 1)[1].split("/", 1)[1]
        headers = {
            "host": sign_as or host,
            "audiohook-organization-id": str(uuid.uuid4()),
            "audiohook-session-id": session_id,
            "audiohook-correlation-id": str(uuid.uuid4()),
            "x-api-key": api_key,
        }
        if secret is not None:
            headers |= audiohook_signature(headers, target, secret, created or int(time.time()))
        del headers["host"]
        ws = await connect(url, additional_headers=headers, compression=None)
        return cls(ws, session_id)

    async def send(self, kind: str, parameters: dict[str, Any], seq: int | None = None) -> None:
        self.seq = self.seq + 1 if seq is None else seq
        message = {"version": "2", "id": self.session_id, "type": kind, "seq": self.seq,
                   "serverseq": self.serverseq, "position": duration(self.position_s),
                   "parameters": parameters}  # fmt: skip
        await self.ws.send(json.dumps(message))

    async def receive(self) -> dict[str, Any]:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            message: dict[str, Any] = json.loads(await self.ws.recv())
        self.serverseq = message["seq"]
        return message

    async def open(
        self, conversation_id: str, media: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """open (the conversation, the media offered), and the server's opened."""
        await self.send("open", {
            "organizationId": str(uuid.uuid4()),
            "conversationId": conversation_id,
            "participant": {"id": str(uuid.uuid4()), "ani": "+15550100", "aniName": "",
                            "dnis": "+15550199"},
            "media": [PCMU_BOTH] if media is None else media,
            "language": "en-US",
        })  # fmt: skip
        return await self.receive()

    async def send_audio(self, ulaw: bytes, channels: int = 2, frame_ms: int = 100) -> None:
        """μ-law, channels interleaved, in frames of `frame_ms`."""
        size = 8 * frame_ms * channels
        for at in range(0, len(ulaw), size):
            frame = ulaw[at : at + size]
            await self.ws.send(frame)
            self.position_s += len(frame) / channels / 8000

    async def pause(self, seconds: float) -> None:
        """Genesys pauses the stream (a secure pause, a hold), then resumes it `seconds` on."""
        start = self.position_s
        await self.send("paused", {})
        self.position_s += seconds
        await self.send("resumed", {"start": duration(start), "discarded": duration(seconds)})

    async def close(self) -> dict[str, Any]:
        """close (the conversation ended) and the server's closed; then the socket closes."""
        await self.send("close", {"reason": "end"})
        closed = await self.receive()
        await self.ws.close()
        return closed
