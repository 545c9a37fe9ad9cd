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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from core.access import is_loopback
from core.audio import UnsupportedAudio
from core.ingestion import Ingestion
from db.outages import REDIS_OUTAGE
from db.packets import Track
from service.feeds.session import FeedRefused, FeedSession, Refusal, Wait
from service.feeds.timeline import Codec, FeedFormat
from service.held_reading import HeldReading
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


HEADER_BYTES = 3  # kind, then the payload's length in 2 bytes


class AudioSocketConnection(asyncio.Protocol, HeldReading):
    """One connection's bytes cut into messages as they are read. With a sink attached
    (FeedSession.read_audio_from: the FrameSinks a WebSocket's protocol is), a message it takes
    (the started call's audio: the whole message, header included) is held by the feed without
    waking its task, and the reading is held until their store (service/held_reading.py);
    every other message is queued for the feed's pump (this is its NextMessage), in the order
    read. At READ_AHEAD queued the cutting stops (the rest of the read waits in the buffer) and
    so does the reading (backpressure: TCP holds Asterisk back); a malformed header is queued as
    its refusal and ends the reading."""

    def __init__(self, serve: Callable[[AudioSocketConnection], object]) -> None:
        self._serve = serve  # what runs the feed once the connection is made
        self.loop = asyncio.get_running_loop()
        self.wait = Wait()
        self._buffer = bytearray()
        self._messages: deque[object] = deque()
        self._arrived: asyncio.Future[None] | None = None
        self._queue_paused = False
        self._refused = False  # a malformed header: nothing more is read
        self._lost = False  # the connection is lost
        self._closed = False  # CLOSED is queued

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (make run's loop) are not asyncio.Transport's subclasses.
        self.transport = cast(asyncio.Transport, transport)
        self._serve(self)

    def queue_full(self) -> bool:
        return self._queue_paused

    def queue_empty(self) -> bool:
        return not self._messages

    def data_received(self, data: bytes) -> None:
        if self._refused or self._lost:
            return
        self._buffer += data
        self._after_read(self._parse())

    def connection_lost(self, exc: Exception | None) -> None:
        self._reading_over()
        self._lost = True
        self._parse()

    def _parse(self) -> int:
        """Cut the whole messages read so far, until the queue is full (the rest waits in the
        buffer, read no further: at most one read's bytes); how many the sink took. Once the
        connection is lost and all is cut, CLOSED (a partial last message is dropped)."""
        buffer = self._buffer
        at, end, taken = 0, len(buffer), 0
        while at + HEADER_BYTES <= end and not (self._queue_paused or self._refused):
            kind, length = buffer[at], int.from_bytes(buffer[at + 1 : at + HEADER_BYTES], "big")
            refused = _refused_header(kind, length)
            if refused is not None:
                self._put(refused)
                self._refused = True
                if not self.transport.is_closing():  # (cut after the connection was lost)
                    self.transport.pause_reading()
                break
            stop = at + HEADER_BYTES + length
            if stop > end:
                break
            message = bytes(buffer[at:stop])
            at = stop
            sink = self.binary_sink  # whole AudioSocket messages (FrameSinks, service/asgi.py)
            if sink is not None and self._may_offer() and sink(message):
                taken += 1
                continue
            self._put(Message(kind, message[HEADER_BYTES:]))
        if self._refused:
            buffer.clear()
        else:
            del buffer[:at]
        if self._lost and not (self._queue_paused or self._refused or self._closed):
            self._closed = True
            self._put(CLOSED)
        return taken

    def _put(self, message: object) -> None:
        self._messages.append(message)
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
        if len(self._messages) >= READ_AHEAD and not self._queue_paused:
            self._queue_paused = True
            if not self.transport.is_closing():
                self.transport.pause_reading()

    async def __call__(self, deadline: float) -> object:
        """The next message (a Message, a header's FeedRefused, CLOSED once the peer went
        away), waiting for it until `deadline` (the loop's clock)."""
        if not self._messages:
            self._arrived = self.loop.create_future()
            try:
                await self.wait.until(deadline, self._arrived)
            finally:
                self._arrived = None
        message = self._messages.popleft()
        self.sink_open = False  # until the pump has handled this one, later messages queue
        if self._queue_paused and not self._messages:
            self._queue_paused = False
            self._parse()  # what waits in the buffer first
            if not (self._queue_paused or self.reads_held or self._refused or self._lost):
                self.transport.resume_reading()
        return message


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
        self._audio_kind: int | None = None  # the kind of the call's audio, once opened

    def audio(self, message: bytes) -> bool:
        """A whole message (header included) of the opened call's audio, in its format, taken
        as it is read (FeedSession.read_audio_from); anything else goes to `handle`."""
        if message[0] != self._audio_kind:
            return False
        self.session.take(self.track, message[HEADER_BYTES:])
        return True

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
            self.format, self._audio_kind = fmt, kind
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
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: AudioSocketConnection(self._connected), host, port, reuse_port=True
        )

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

    def _connected(self, connection: AudioSocketConnection) -> None:
        peer = connection.transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else None
        if not peer_allowed(host, self.settings.audiosocket_allow):
            log.warning("AudioSocket %s: peer %s is not allowed (AUDIOSOCKET_ALLOW)",
                        self.address, host)  # fmt: skip
            connection.transport.close()  # nothing read
            return
        task = asyncio.get_running_loop().create_task(self._serve(connection, host))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, connection: AudioSocketConnection, host: str | None) -> None:
        session = FeedSession(self.ingestion, TRANSPORT, actor=f"audiosocket:{host}")
        codec = _CODECS[self.settings.audiosocket_format]
        protocol = AudioSocketSession(session, self.track, codec)
        session.read_audio_from(connection, connection.wait, protocol.audio)
        refused: FeedRefused | None = None
        try:
            try:
                await session.pump(
                    connection,
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
                if not connection.transport.is_closing():
                    connection.transport.write(ending)
        finally:
            await session.end()  # the call completes (if this was its last feed) before the
            connection.transport.close()  # PBX sees the end, after what was written is sent


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
