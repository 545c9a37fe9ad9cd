"""One load process of `bench.fanout`: N Server-Sent Events subscribers of GET /v1/events that
count what they get, and as little else as possible, so the figures measure the server.

Each subscriber is a bare asyncio Protocol (no StreamReader, no HTTP or SSE parser): it sends
the request once, then counts the complete lines that start an event (`id: `) in what arrives.
Every `latency_every`-th subscriber also reads each event's `at` (the publisher's clock, epoch
seconds) and keeps receive time - at. The chunked transfer coding is not decoded: its size
lines never look like an `id: ` line or contain `"at":`.

Driven over stdin/stdout, one JSON line per answer:
    (on start)  {"ready": subscribers}               once every subscriber has its ": connected"
    snap        {"t", "cpu", "counts", "lat"}        counts so far; latencies since the last snap
    stop        (closes every connection and exits)
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Callable
from typing import cast

import orjson
import uvloop

from bench.load import HOST

_EVENT_START = b"\nid: "  # every event's first line; a line of its own after a CRLF
_AT = re.compile(rb'"at":([0-9.eE+-]+)')
_CONNECTED = b": connected"  # the feed's first comment, sent once the subscriber is registered
CONNECT_AT_ONCE = 50  # connections opened together (the server's accept backlog is larger)


class Subscriber(asyncio.Protocol):
    def __init__(self, request: bytes, latencies: list[float] | None) -> None:
        self.request = request
        self.latencies = latencies  # None: this one only counts
        self.count = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._partial = b"\n"  # the unfinished last line (an event may arrive in pieces)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are asyncio.Transport in all but their class
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        text = self._partial + data
        # Only complete lines are looked at; the newline before each kept (for the pattern).
        end = text.rfind(b"\n")
        complete, self._partial = text[:end], text[end:]
        self.count += complete.count(_EVENT_START)
        if self.latencies is not None:
            self.latencies.extend(now - float(at) for at in _AT.findall(complete))
        if not self.ready.done() and _CONNECTED in complete:
            self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"feed closed before it opened: {exc}"))


def _factory(subscriber: Subscriber) -> Callable[[], Subscriber]:
    return lambda: subscriber


def feed_request(query: str) -> bytes:
    path = "/v1/events" + (f"?{query}" if query else "")
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n\r\n".encode()


async def open_all(
    port: int, subscribers: int, query: str, latency_every: int, latencies: list[float]
) -> list[Subscriber]:
    loop = asyncio.get_running_loop()
    request = feed_request(query)
    subs = [
        Subscriber(request, latencies if i % latency_every == 0 else None)
        for i in range(subscribers)
    ]
    for start in range(0, subscribers, CONNECT_AT_ONCE):
        group = subs[start : start + CONNECT_AT_ONCE]
        await asyncio.gather(*(loop.create_connection(_factory(s), HOST, port) for s in group))
        await asyncio.wait_for(asyncio.gather(*(s.ready for s in group)), 30)
    return subs


async def serve(port: int, subscribers: int, query: str, latency_every: int) -> None:
    latencies: list[float] = []
    subs = await open_all(port, subscribers, query, latency_every, latencies)
    out = sys.stdout.buffer
    out.write(orjson.dumps({"ready": len(subs)}) + b"\n")
    out.flush()
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while (await commands.readline()).strip() == b"snap":
        snap = {
            "t": time.time(),
            "cpu": time.process_time(),
            "counts": [s.count for s in subs],
            "lat": latencies[:],
        }
        latencies.clear()
        out.write(orjson.dumps(snap) + b"\n")
        out.flush()
    # "stop", or the coordinator went away (EOF)
    for s in subs:
        if s.transport is not None:
            s.transport.close()
    await asyncio.sleep(0.1)  # let the closes go out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--subscribers", type=int, required=True)
    parser.add_argument("--query", default="", help="filters of GET /v1/events, e.g. call_id=x")
    parser.add_argument("--latency-every", type=int, default=5)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.subscribers, args.query, args.latency_every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
