"""Asterisk AudioSocket: a TCP listener per party (AUDIOSOCKET_ADDR: the caller, track inbound;
AUDIOSOCKET_OUTBOUND_ADDR: the agent, track outbound), Asterisk connecting to it.

The protocol (Asterisk's include/asterisk/res_audiosocket.h and res/res_audiosocket.c): messages
of 1 byte kind, 2 bytes big-endian payload length, the payload. `0x01` the call's 16-byte UUID
(first), `0x10` audio (slin 8 kHz from the dialplan application, the channel's codec from the
channel driver and ARI: AUDIOSOCKET_FORMAT says which), `0x11`-`0x18` signed linear at 12, 16,
24, 32, 44.1, 48, 96 and 192 kHz, `0x03` a DTMF digit (ignored), `0x00` hang up, `0xff` an error
on Asterisk's side; Asterisk ends a call by closing the socket. The call id is the UUID in its
canonical text form: the same UUID on both listeners is one two-party call.

It carries no credentials: peers other than loopback, or than AUDIOSOCKET_ALLOW's networks when
it is set, are closed at once (nothing read). A malformed message (an unknown kind, a length past
MAX_PAYLOAD_BYTES, audio before the UUID, a UUID that is not 16 bytes, audio that changes format)
ends the session with a `0xff` message, keeping what was stored; so does any refusal of
core/ingestion.py (a completed call, a cap) and a retryable failure (Redis, the backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from core.access import is_loopback
from core.audio import UnsupportedAudio
from core.ingestion import Ingestion
from db.outages import REDIS_OUTAGE
from db.packets import Track
from service.feeds.session import FeedRefused, FeedSession, Refusal, queued
from service.feeds.timeline import Codec, FeedFormat
from service.streaming import CLOSED, READ_AHEAD
from settings import Settings, host_port

log = logging.getLogger(__name__)

TRANSPORT = "audiosocket"
KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_AUDIO = 0x10
# Signed linear at other rates (Asterisk 2025-10, "add message types for all slin sample rates").
KIND_SLIN_RATES = {
    0x11: 12000,
    0x12: 16000,
    0x13: 24000,
    0x14: 32000,
    0x15: 44100,
    0x16: 48000,
    0x17: 96000,
    0x18: 192000,
}
KIND_ERROR = 0xFF
KNOWN_KINDS = frozenset(
    {KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_AUDIO, KIND_ERROR, *KIND_SLIN_RATES}
)
# Asterisk sends a frame of its channel's packetisation (20 ms: 320 bytes of slin, 1,920 at
# 48 kHz); a message is refused past 100 ms of 48 kHz audio, so a wrong length cannot make us
# wait for 64 KB that never comes.
MAX_PAYLOAD_BYTES = 9600
ERROR_MESSAGE = bytes([KIND_ERROR, 0, 0])
_CODECS: dict[str, Codec] = {"slin": "slin", "ulaw": "mulaw", "alaw": "alaw"}


@dataclass(frozen=True, slots=True)
class Message:
    kind: int
    payload: bytes


def pack(kind: int, payload: bytes = b"") -> bytes:
    """One AudioSocket message."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


def peer_allowed(host: str | None, allow: Sequence[str]) -> bool:
    """Loopback only, or AUDIOSOCKET_ALLOW's networks when it names any."""
    if not allow:
        return is_loopback(host)
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(network, strict=False) for network in allow)


async def _read(reader: asyncio.StreamReader, messages: asyncio.Queue[object]) -> None:
    """Messages read ahead into a bounded queue (backpressure beyond); a malformed header is
    put as its refusal and ends the reading; CLOSED when the peer went away."""
    try:
        while True:
            header = await reader.readexactly(3)
            kind, length = header[0], int.from_bytes(header[1:], "big")
            refused = _refused_header(kind, length)
            if refused is not None:
                await messages.put(refused)
                return
            await messages.put(Message(kind, await reader.readexactly(length)))
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    await messages.put(CLOSED)


def _refused_header(kind: int, length: int) -> FeedRefused | None:
    if kind not in KNOWN_KINDS:
        return FeedRefused("unknown_kind", f"unknown message kind 0x{kind:02x}")
    if length > MAX_PAYLOAD_BYTES:
        message = f"a message of {length} bytes; at most {MAX_PAYLOAD_BYTES} are accepted"
        return FeedRefused("too_long", message)
    return None


class AudioSocketSession:
    """One connection: the UUID, then audio of one track."""

    def __init__(self, session: FeedSession, track: Track, codec: Codec) -> None:
        self.session = session
        self.track = track
        self.codec = codec  # what kind 0x10 is (AUDIOSOCKET_FORMAT)
        self.call_id: str | None = None
        self.format: FeedFormat | None = None

    async def handle(self, message: object) -> bool:
        if isinstance(message, FeedRefused):
            raise message
        assert isinstance(message, Message)
        kind, payload = message.kind, message.payload
        if kind == KIND_UUID:
            if self.call_id is not None:
                raise FeedRefused("uuid_again", "a second UUID message")
            if len(payload) != 16:
                raise FeedRefused("invalid_uuid", f"the UUID is {len(payload)} bytes, not 16")
            self.call_id = str(uuid.UUID(bytes=payload))
            await self.session.join(self.call_id)
            return False
        if kind == KIND_AUDIO or kind in KIND_SLIN_RATES:
            await self._audio(kind, payload)
            return False
        if kind == KIND_HANGUP:
            return True
        if kind == KIND_ERROR:  # Asterisk's side failed: the call ends here
            log.warning("AudioSocket call %s: Asterisk sent an error (%s)",
                        self.call_id, payload.hex() or "no code")  # fmt: skip
            return True
        return False  # a DTMF digit: nothing Callstream keeps

    async def _audio(self, kind: int, payload: bytes) -> None:
        if self.call_id is None:
            raise FeedRefused("audio_before_uuid", "audio before the UUID message")
        try:
            fmt = (
                FeedFormat(self.codec, 8000)
                if kind == KIND_AUDIO
                else FeedFormat("slin", KIND_SLIN_RATES[kind])
            )
        except UnsupportedAudio as error:
            raise FeedRefused.audio(error) from None
        if self.format is None:
            await self.session.open(self.call_id, fmt, {"track": self.track.value})
            self.format = fmt
        elif fmt != self.format:
            raise FeedRefused("format_changed", f"audio of kind 0x{kind:02x} after {self.format}")
        self.session.take(self.track, payload)


class AudioSocketListener:
    """One TCP listener: each connection one track of a call."""

    def __init__(self, settings: Settings, ingestion: Ingestion, address: str, track: Track):
        self.settings = settings
        self.ingestion = ingestion
        self.address = address
        self.track = track
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        host, port = host_port(self.address)
        if not self.settings.audiosocket_allow and not is_loopback(host):
            raise RuntimeError(
                f"the AudioSocket listener {self.address} is not on loopback: AudioSocket carries "
                "no credentials, so set AUDIOSOCKET_ALLOW to the networks of your Asterisk servers"
            )
        # reuse_port: each API process listens, and the kernel spreads the connections.
        self.server = await asyncio.start_server(self._connected, host, port, reuse_port=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.server is not None:
            await self.server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else None
        if not peer_allowed(host, self.settings.audiosocket_allow):
            log.warning("AudioSocket %s: peer %s is not allowed (AUDIOSOCKET_ALLOW)",
                        self.address, host)  # fmt: skip
            return
        session = FeedSession(self.ingestion, TRANSPORT, actor=f"audiosocket:{host}")
        codec = _CODECS[self.settings.audiosocket_format]
        protocol = AudioSocketSession(session, self.track, codec)
        messages: asyncio.Queue[object] = asyncio.Queue(READ_AHEAD)
        reading = asyncio.create_task(_read(reader, messages))
        refused: FeedRefused | None = None
        try:
            try:
                await session.pump(
                    queued(messages),
                    protocol.handle,
                    self.settings.ws_idle_timeout_s,
                    self.settings.ws_start_timeout_s,
                )
            except FeedRefused as error:
                refused = error
            except REDIS_OUTAGE:
                refused = FeedRefused.outage()
            refused = await session.finish(refused)
            if refused is not None:
                log.warning("AudioSocket call %s (%s): %s: %s", protocol.call_id,
                            self.track.value, refused.code, refused.message)  # fmt: skip
                ending = pack(KIND_HANGUP) if refused.refusal is Refusal.IDLE else ERROR_MESSAGE
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write(ending)
                    await writer.drain()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            await session.end()


async def start_listeners(settings: Settings, ingestion: Ingestion) -> list[AudioSocketListener]:
    """The configured listeners, listening (none when both addresses are empty)."""
    listeners = [
        AudioSocketListener(settings, ingestion, address, track)
        for address, track in (
            (settings.audiosocket_addr, Track.INBOUND),
            (settings.audiosocket_outbound_addr, Track.OUTBOUND),
        )
        if address
    ]
    try:
        for listener in listeners:
            await listener.start()
    except BaseException:
        for listener in listeners:
            await listener.close()
        raise
    return listeners
