"""service/ws_protocol.py takes whole masked text and binary frames itself, before websockets'
parser: the
messages an app receives, what the peer is answered and when the socket is closed must be the
same as uvicorn's own protocol gives for the same bytes, however the reads split them."""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.server import ServerProtocol

from service.asgi import FRAME_SINK
from service.ws_protocol import QueuedWebSocketProtocol

MAX_SIZE = 1024
HANDSHAKE = (
    b"GET /media HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(payload: bytes, opcode: int = 1, fin: bool = True, masked: bool = True,
          long_form: bool = False, rsv1: bool = False) -> bytes:  # fmt: skip
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    flag = 0x80 if masked else 0
    n = len(payload)
    if long_form:
        head += bytes([flag | 127]) + struct.pack("!Q", n)
    elif n < 126:
        head += bytes([flag | n])
    else:
        head += bytes([flag | 126]) + struct.pack("!H", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


Served = tuple[list[dict[str, Any]], bytes, bool]


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 9) if name in ("sockname", "peername") else default


async def accepted(
    app: Any,
    protocol_class: type[WebSocketsSansIOProtocol] = QueuedWebSocketProtocol,
    transport: Transport | None = None,
    max_queue: int = 10_000,
) -> tuple[Any, Transport]:
    """A protocol serving `app` on a fake transport, past the handshake and the app's accept."""
    config = Config(app=app, ws_max_size=MAX_SIZE, ws_max_queue=max_queue, lifespan="off",
                    ws_per_message_deflate=False)  # fmt: skip
    config.load()
    protocol = protocol_class(config, ServerState(), {})
    transport = transport or Transport()
    protocol.connection_made(transport)
    protocol.data_received(HANDSHAKE)
    for _ in range(5):
        await asyncio.sleep(0)
    return protocol, transport


async def served(protocol_class: type[WebSocketsSansIOProtocol], reads: list[bytes]) -> Served:
    """What an app that accepts and then receives every message saw, what the peer was sent
    after the handshake, and whether the socket was closed."""
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "websocket.disconnect":
                return

    protocol, transport = await accepted(app, protocol_class)
    handshake = len(transport.written)
    for data in reads:
        protocol.data_received(data)
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    for _ in range(5):
        await asyncio.sleep(0)
    return seen, bytes(transport.written[handshake:]), transport.closed


def splits(stream: bytes) -> list[list[bytes]]:
    """The stream in one read, a byte a read, and cut at a few odd places."""
    cuts = [[stream], [stream[i : i + 1] for i in range(len(stream))]]
    for size in (3, 7, 131):
        cuts.append([stream[i : i + size] for i in range(0, len(stream), size)])
    return cuts


MEDIA = b'{"event":"media","media":{"payload":"' + b"f" * 216 + b'"}}'
AUDIO = bytes(range(160))  # 20 ms of 8 kHz mu-law, as Asterisk sends it
GOOD = frame(b"a")
STREAMS = {
    "media frames": frame(MEDIA) * 3 + frame(b"x" * 10) + frame(b""),
    "a fragmented message between whole ones": (
        GOOD + frame(b"he", fin=False) + frame(b"ll", opcode=0, fin=False)
        + frame(b"o", opcode=0) + frame(b"b")
    ),
    "a ping between text frames": GOOD + frame(b"hi", opcode=9) + frame(b"b"),
    "binary frames": GOOD + frame(b"\x00\x01", opcode=2) + frame(b"b"),
    "a PBX feed's audio": (
        frame(b"MEDIA_START format:ulaw") + frame(AUDIO, opcode=2) * 3
        + frame(b"\x7f" * 960, opcode=2) + frame(b"", opcode=2) + frame(b"DTMF_END")
    ),
    "a fragmented binary message": (
        frame(b"\x01", opcode=2, fin=False) + frame(b"\x02", opcode=0) + frame(AUDIO, opcode=2)
    ),
    "a length in 8 bytes": GOOD + frame(b"long", long_form=True) + frame(b"b"),
    "invalid UTF-8": GOOD + frame(b"\xff\xfe") + frame(b"b"),
    "the peer's close": GOOD + frame(struct.pack("!H", 1000), opcode=8) + frame(b"b"),
}  # fmt: skip
# Frames websockets' parser refuses (the socket is closed 1009 or 1002): uvicorn then drops the
# messages it parsed before it in the same read. This protocol may have queued them already (those
# it took itself), as uvicorn does when they came in a read of their own: never fewer.
REFUSED = {
    "a frame over the size limit": frame(b"y" * (MAX_SIZE + 1)),
    "a binary frame over the size limit": frame(b"y" * (MAX_SIZE + 1), opcode=2),
    "an unmasked frame": frame(b"b", masked=False),
    "a reserved bit set": frame(b"b", rsv1=True),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
async def test_the_frames_taken_before_websockets_parser_give_what_uvicorn_gives(name: str):
    for reads in splits(STREAMS[name]):
        ours = await served(QueuedWebSocketProtocol, reads)
        theirs = await served(WebSocketsSansIOProtocol, reads)
        assert ours == theirs, (name, [len(r) for r in reads][:5])


@pytest.mark.parametrize("name", sorted(REFUSED))
async def test_a_refused_frame_closes_as_uvicorn_does_after_the_whole_messages_before_it(name):
    stream = GOOD + REFUSED[name] + frame(b"c")
    kept = await served(WebSocketsSansIOProtocol, [GOOD, stream[len(GOOD) :]])
    assert kept[0][0] == {"type": "websocket.receive", "text": "a"}
    for reads in splits(stream):
        ours = await served(QueuedWebSocketProtocol, reads)
        assert ours in (kept, await served(WebSocketsSansIOProtocol, reads)), name


async def test_whole_media_frames_reach_the_app_in_order_without_websockets_parser(
    monkeypatch: pytest.MonkeyPatch,
):
    parsed: list[bytes] = []
    parse = ServerProtocol.receive_data

    def counted(conn: ServerProtocol, data: bytes) -> None:
        parsed.append(data)
        parse(conn, data)

    monkeypatch.setattr(ServerProtocol, "receive_data", counted)
    payloads = [b'{"n":%d}' % i for i in range(50)] + [MEDIA]
    reads = [frame(p) for p in payloads[:10]] + [b"".join(frame(p) for p in payloads[10:])]
    seen, _, _ = await served(QueuedWebSocketProtocol, reads)
    texts = [m["text"] for m in seen if m["type"] == "websocket.receive"]
    assert texts == [p.decode() for p in payloads]
    assert parsed == [HANDSHAKE]


async def sunk_and_received(
    reads: list[bytes], declined: set[str] | set[bytes], *, sink_text: bool = True
) -> list[str | bytes]:
    """What an app with sinks (service/asgi.py FRAME_SINK) for binary and (`sink_text`) text
    messages handled, in the order it handled it: the sinks take every message but those in
    `declined`; a message the app receives from the queue is handled two loop steps later
    (while more reads come in), and only then does it reopen the sinks."""
    handled: list[str | bytes] = []

    def sink(message: str | bytes) -> bool:
        if message in declined:
            return False
        handled.append(message)
        return True

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        sinks = scope["extensions"][FRAME_SINK]["sinks"]
        sinks.attach(sink if sink_text else None, binary=sink)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            handled.append(message.get("text", message.get("bytes")))
            sinks.reopen()

    protocol, _ = await accepted(app)
    for data in reads:
        protocol.data_received(data)
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    await asyncio.wait(protocol.tasks, timeout=5)  # the app, to its websocket.disconnect
    return handled


@pytest.mark.parametrize("per_read", [1, 2, 5, 40])
async def test_messages_reach_an_app_with_a_sink_in_the_order_they_were_read(per_read: int):
    # Every 7th message is declined, so it goes through the queue while the next ones are read.
    texts = [f'{{"n":{i}}}' for i in range(40)]
    frames = [frame(t.encode()) for t in texts]
    reads = [b"".join(frames[i : i + per_read]) for i in range(0, len(frames), per_read)]
    handled = await sunk_and_received(reads, declined=set(texts[::7]))
    assert handled == texts


async def test_a_sink_takes_nothing_the_app_has_not_reopened_it_for():
    # One declined message, then the rest in reads of their own: while the app is handling the
    # declined one, the sink is closed, and what is read meanwhile waits in the queue.
    texts = [f'{{"n":{i}}}' for i in range(6)]
    handled = await sunk_and_received([frame(t.encode()) for t in texts], declined={texts[0]})
    assert handled == texts


@pytest.mark.parametrize("per_read", [1, 3, 40])
async def test_binary_messages_reach_an_app_with_a_binary_sink_in_order_with_its_text_ones(
    per_read: int,
):
    # A PBX feed's shape: text control messages (received) among binary audio (sunk), and every
    # 5th binary one declined (received too, while the next ones are read).
    sent: list[str | bytes] = []
    for i in range(40):
        sent.append(f"STATUS {i}" if i % 4 == 0 else bytes([i]) * 160)
    declined = {m for m in sent[1::5] if isinstance(m, bytes)}
    frames = [frame(m.encode() if isinstance(m, str) else m, 1 if isinstance(m, str) else 2)
              for m in sent]  # fmt: skip
    reads = [b"".join(frames[i : i + per_read]) for i in range(0, len(frames), per_read)]
    handled = await sunk_and_received(reads, declined, sink_text=False)
    assert handled == sent


async def test_waiting_for_a_message_does_not_ask_for_the_running_loop(
    monkeypatch: pytest.MonkeyPatch,
):
    # Python 3.11's get_running_loop makes a getpid() system call each time it is asked.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    config = Config(app=app, lifespan="off")
    protocol = QueuedWebSocketProtocol(config, ServerState(), {})
    getter = asyncio.ensure_future(protocol.queue.get())
    asked = 0
    running_loop = asyncio.events._get_running_loop

    def counted() -> asyncio.AbstractEventLoop | None:
        nonlocal asked
        asked += 1
        return running_loop()

    monkeypatch.setattr(asyncio.events, "_get_running_loop", counted)
    await asyncio.sleep(0)  # the getter waits
    protocol.queue.put_nowait({"type": "websocket.receive", "text": "a"})
    assert await getter == {"type": "websocket.receive", "text": "a"}
    assert asked == 0


class PausingTransport(Transport):
    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def reads(self) -> bool:  # a call, so that a type checker does not narrow it
        return self.reading


async def holding_protocol(
    hold_s: float,
) -> tuple[QueuedWebSocketProtocol, PausingTransport, list[str]]:
    """A protocol whose app's sink takes every text message and holds the reading for `hold_s`
    after each read it took messages in."""
    taken: list[str] = []
    loop = asyncio.get_running_loop()

    def sink(text: str) -> bool:
        taken.append(text)
        return True

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        sinks = scope["extensions"][FRAME_SINK]["sinks"]
        sinks.attach(sink, lambda: loop.time() + hold_s)
        await receive()  # the disconnect

    transport = PausingTransport()
    protocol, _ = await accepted(app, transport=transport, max_queue=2)
    return protocol, transport, taken


async def test_after_a_read_its_sink_took_messages_in_the_socket_is_read_again_when_the_app_said():
    protocol, transport, taken = await holding_protocol(hold_s=0.05)
    protocol.data_received(frame(b"a") + frame(b"b"))
    assert (taken, transport.reads()) == (["a", "b"], False)
    await asyncio.sleep(0.1)
    assert transport.reads()
    protocol.connection_lost(None)


async def test_caught_up_lets_the_held_reading_go_and_returns_after_the_next_read():
    protocol, transport, taken = await holding_protocol(hold_s=60)
    protocol.data_received(frame(b"a"))
    assert not transport.reads()
    caught_up = asyncio.ensure_future(protocol.caught_up())
    await asyncio.sleep(0)
    assert transport.reads()
    assert not caught_up.done()
    protocol.data_received(frame(b"b"))  # what had come meanwhile
    await asyncio.sleep(0)
    assert caught_up.done()
    assert taken == ["a", "b"]
    protocol.connection_lost(None)


async def test_caught_up_with_nothing_to_read_returns_after_one_turn_of_polling():
    protocol, transport, _ = await holding_protocol(hold_s=60)
    protocol.data_received(frame(b"a"))
    await asyncio.wait_for(protocol.caught_up(), 1.0)
    assert transport.reads()
    await asyncio.wait_for(protocol.caught_up(), 1.0)  # let go, nothing read since: waits a turn
    protocol.data_received(frame(b"b"))  # held again
    protocol.connection_lost(None)
    await asyncio.wait_for(protocol.caught_up(), 1.0)  # the socket is gone: at once


async def test_a_full_queue_drained_does_not_resume_a_held_reading():
    protocol, transport, _ = await holding_protocol(hold_s=60)
    protocol.attach(None)  # messages go to the queue: two fill it (ws_max_queue=2)
    protocol.data_received(frame(b"a") + frame(b"b"))
    assert (protocol.read_paused, transport.reads()) == (True, False)
    protocol.hold_until = lambda: asyncio.get_running_loop().time() + 60
    protocol.reads_held = True  # as if the app held it meanwhile
    await protocol.receive()
    await protocol.receive()
    assert (protocol.read_paused, transport.reads()) == (False, False)
    protocol.connection_lost(None)
