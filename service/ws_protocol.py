"""The WebSocket protocol uvicorn serves the API's sockets with (`--ws
service.ws_protocol:QueuedWebSocketProtocol`, devstack/commands.py and the Procfile): uvicorn's
own websockets-sansio protocol, but for when it stops reading a socket.

uvicorn's stops reading a socket (pause_reading) as soon as one message waits for the app, and
reads again once the app has taken it: two epoll changes and a loop iteration for every message,
which is a good part of a media frame's cost (20 ms frames, two tracks: BENCHMARKS.md, Real-time
capacity). This one stops reading only once `--ws-max-queue` messages wait (uvicorn's setting,
32 by default, which its sansio protocol leaves unused), and reads again once the app has taken
them all. A socket's memory stays bounded (that many messages of at most `--ws-max-size` each,
plus one read); a peer faster than the app is still held back by TCP; nothing else changes
(the handshake, the closing, pings, errors are uvicorn's).

And it takes the common frame itself: a whole text or binary message in one masked frame (a
media frame, a PBX feed's audio), read at a frame boundary of an open connection without
extensions, is unmasked and queued here, without websockets' parser (a generator per read, a
Frame object, its checks): websockets would have produced the same message, with nothing else to
do for it. Anything else (a partial frame, a fragment, a control frame, a frame websockets must
refuse, a connection with permessage-deflate) goes to websockets from that frame on.

A whole message (taken so, or parsed by websockets) may also be handed to the app as it is
read, not queued: an app that holds a socket's messages anyway (the media stream holds its frames
for HOLD_S to store them together, a PBX feed its audio) attaches a sink for text messages, for
binary ones or both (`scope["extensions"][FRAME_SINK]`, service/asgi.py), and its task is not
woken for each message (a task's wake, a queue's future and the app's coroutine chain were about
half of a media frame's instructions in the protocol and the app: BENCHMARKS.md, Real-time
capacity). Messages reach the
app in the order they were read, whichever way each goes: a sink is offered a message only
when nothing waits in the queue and the app has handled, and reopened the sinks after, every
message it received from the queue; a message a sink declines is queued as usual.

Such an app may also hold the socket's reading (`hold_until`, service/held_reading.py, which
the AudioSocket connections share): after a read in which a sink took messages, the socket is
not read again until the time the app names (the media stream: the end of its hold window, when
it stores what it holds), so what the peer sends meanwhile waits in the kernel and comes in one
read, not a read and a wake-up of the loop for every frame. Before it stores, the app reads what
has come (`caught_up`): a frame in the socket's buffer is stored as if it had been read as it
came (and taken in before a completion: service/routes/media_ws.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.protocol import State

from service.asgi import FRAME_SINK
from service.held_reading import HeldReading

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

_FIN_TEXT = 0x81  # FIN set, no reserved bit (no extension's), opcode 1: a whole text message
_FIN_BINARY = 0x82  # the same, opcode 2: a whole binary message
_MASKED = 0x80
_LENGTH_16 = 126  # the length follows in 2 bytes; 127 (8 bytes) is left to websockets
_MASK_BYTES = 4


class _SocketQueue(asyncio.Queue[Any]):
    """The socket's queue of messages for the app, bound to the socket's loop from the start.
    Python 3.11's Queue.get asks for the running loop each time it waits, and asyncio's
    get_running_loop calls getpid() (a system call: glibc caches no pid): 5% of the API's CPU
    at 120 live calls, once a hold window for every media stream (BENCHMARKS.md, Real-time
    capacity). A socket's queue is only ever used on the loop that serves the socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._bound = loop

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        return self._bound


class QueuedWebSocketProtocol(WebSocketsSansIOProtocol, HeldReading):
    _taken = 0  # messages the sinks took in the current read

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _SocketQueue(self.loop)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.close_sent:  # the handshake goes on: the app is called with this scope
            extensions: dict[str, dict[object, object]] = self.scope["extensions"]
            extensions[FRAME_SINK] = {"sinks": self}

    async def receive(self) -> Any:
        # uvicorn's, but its reading is not resumed while the app holds it.
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            if not self.reads_held:
                self.transport.resume_reading()
        # Until the app has handled this one, later messages queue behind it.
        self.sink_open = False
        return message

    def queue_full(self) -> bool:
        return self.read_paused  # uvicorn's flag: --ws-max-queue messages wait for the app

    def queue_empty(self) -> bool:
        return self.queue.empty()

    def connection_lost(self, exc: Exception | None) -> None:
        self._reading_over()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._taken = 0
        rest = self._take_frames(data) if self._at_plain_frame_boundary() else data
        if rest:
            super().data_received(rest)
        self._after_read(self._taken)

    def _at_plain_frame_boundary(self) -> bool:
        """websockets' parser waits for a frame's first byte, with nothing of its own to apply:
        a frame taken here is one it would have taken alike."""
        conn = self.conn
        return (
            conn.state is State.OPEN
            and not conn.reader.buffer
            and conn.current_size is None  # not within a fragmented message
            and not conn.extensions
            and conn.max_fragment_size is None  # uvicorn sets one limit, for whole messages
            and not conn.debug
        )

    def _take_frames(self, data: bytes) -> bytes:
        """Hand the app (its sink, else its queue) the whole masked text and binary frames at
        the start of `data`; what is left from the first frame that is not one (or not whole) is
        websockets'."""
        end, limit, at = len(data), self.conn.max_message_size, 0
        while (
            at + 2 + _MASK_BYTES <= end
            and data[at] in (_FIN_TEXT, _FIN_BINARY)
            and data[at + 1] & _MASKED
        ):
            binary = data[at] == _FIN_BINARY
            length, mask_at = data[at + 1] & 0x7F, at + 2
            if length == _LENGTH_16:
                length, mask_at = int.from_bytes(data[at + 2 : at + 4]), at + 4
            elif length > _LENGTH_16:
                break
            start = mask_at + _MASK_BYTES
            stop = start + length
            if stop > end or (limit is not None and length > limit):
                break
            payload = apply_mask(data[start:stop], data[mask_at:start])
            at = stop
            if self._sunk_bytes(payload) if binary else self._sunk(payload):
                continue
            self.curr_msg_data_type = "bytes" if binary else "text"
            self.frames = [payload]
            self.send_receive_event_to_app()
            if self.conn.state is not State.OPEN:  # invalid UTF-8: closed 1007
                break
        return data[at:] if at else data

    def handle_text(self, event: Frame) -> None:
        # A whole text message websockets parsed (a connection with permessage-deflate, or one
        # this protocol did not take itself): offered to the sink too.
        if event.fin and self._sunk(event.data):
            return
        super().handle_text(event)

    def handle_bytes(self, event: Frame) -> None:
        # A whole binary message websockets parsed: offered to the binary sink too.
        if event.fin and self._sunk_bytes(bytes(event.data)):
            return
        super().handle_bytes(event)

    def _sunk(self, payload: bytes | bytearray | memoryview) -> bool:
        """Whether the app's sink took the message (in order: see the module's doc). Invalid
        UTF-8 is left to uvicorn's path, which closes the socket 1007."""
        sink = self.sink
        if sink is None or self.close_sent or not self._may_offer():
            return False
        try:
            text = str(payload, "utf-8")
        except UnicodeDecodeError:
            return False
        if not sink(text):
            return False
        self._taken += 1
        return True

    def _sunk_bytes(self, payload: bytes) -> bool:
        """Whether the app's binary sink took the message (in order, as `_sunk`)."""
        sink = self.binary_sink
        if sink is None or self.close_sent or not self._may_offer():
            return False
        if not sink(payload):
            return False
        self._taken += 1
        return True

    def send_receive_event_to_app(self) -> None:
        # uvicorn 0.54's method, but for the pause's condition (the queue is full, not merely
        # not empty).
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # past websocket.close: discarded, so that the peer's close reply is read
        if self.curr_msg_data_type == "text":
            try:
                self.queue.put_nowait({"type": "websocket.receive", "text": data.decode()})
            except UnicodeDecodeError:
                self.logger.exception("Invalid UTF-8 sequence received from client.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused and self.queue.qsize() >= self.config.ws_max_queue:
            self.read_paused = True
            self.transport.pause_reading()
