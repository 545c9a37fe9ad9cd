"""A minimal HTTP/1.1 keep-alive load generator over asyncio streams, and call-replay workloads.

Requests are pre-built bytes; a response is its status line, headers up to the blank line and a
Content-Length body. Closed loop: N connections send back to back. Open loop: request i is due at
t0 + i / rate and its latency counts from that instant, so a stalled server is not hidden by the
generator waiting for it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.common import pct

HOST = "127.0.0.1"
PAYLOAD_CHARS = 216  # 20 ms of 8 kHz mu-law (160 bytes), base64: what a PBX sends per packet


@dataclass
class Result:
    requests: int = 0
    items: int = 0  # packets carried (a batch request carries many)
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def record(self, status: int, latency_s: float, items: int) -> None:
        self.latencies_s.append(latency_s)
        self.statuses[status] += 1
        self.requests += 1
        self.items += items

    @property
    def rate(self) -> float:
        return self.items / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def request_rate(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def pct_ms(self, q: float) -> float:
        return pct(self.latencies_s, q) * 1000

    @property
    def max_ms(self) -> float:
        return max(self.latencies_s) * 1000 if self.latencies_s else float("nan")

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 400 and status != 409)


def summarize(r: Result) -> dict[str, Any]:
    """A run's figures as the ingestion suites report them (packets/s, latency in ms)."""
    return {
        "rate": r.rate,
        "requests": r.requests,
        "packets": r.items,
        "seconds": r.elapsed_s,
        "p50": r.pct_ms(0.50),
        "p95": r.pct_ms(0.95),
        "p99": r.pct_ms(0.99),
        "max": r.max_ms,
        "errors": r.errors,
        "statuses": {str(k): v for k, v in sorted(r.statuses.items())},
    }


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        if len(raw) > 65536:
            await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        at = head.lower().find(b"\r\ncontent-length:")
        length = int(head[at + 17 : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


def http_request(method: str, path: str, body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def payload(rng: random.Random) -> str:
    return "".join(
        rng.choices(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", k=PAYLOAD_CHARS
        )
    )


def call_sequences(
    packets: int, rng: random.Random, dup: float = 0.02, swap: float = 0.02
) -> list[int]:
    """0..packets-1 in order, with ~`swap` of them reordered (adjacent swap) and ~`dup` repeated."""
    seqs = list(range(packets))
    for i in range(packets - 1):
        if rng.random() < swap:
            seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
    out: list[int] = []
    for s in seqs:
        out.append(s)
        if rng.random() < dup:
            out.append(s)
    return out


def packet_dict(seq: int, data: str) -> dict[str, object]:
    return {"sequence": seq, "timestamp": 1_700_000_000.0 + seq * 0.02, "data": data}


@dataclass
class Workload:
    """Pre-built requests, interleaved across calls so every call is live at the same time."""

    requests: list[tuple[bytes, int]]  # (bytes, packets carried)
    call_ids: list[str]
    completes: list[bytes]

    @property
    def packets(self) -> int:
        return sum(n for _, n in self.requests)


def single_packet_workload(prefix: str, calls: int, packets: int, seed: int = 1) -> Workload:
    rng = random.Random(seed)
    data = [payload(rng) for _ in range(64)]
    call_ids = [f"{prefix}-{i}" for i in range(calls)]
    per_call = [
        [
            http_request(
                "POST", f"/v1/call/stream/{cid}", orjson.dumps(packet_dict(s, data[s % 64]))
            )
            for s in call_sequences(packets, rng)
        ]
        for cid in call_ids
    ]
    return Workload(list(_interleave(per_call)), call_ids, _completes(call_ids))


def batch_workload(prefix: str, calls: int, batches: int, size: int, seed: int = 2) -> Workload:
    rng = random.Random(seed)
    data = [payload(rng) for _ in range(64)]
    call_ids = [f"{prefix}-{i}" for i in range(calls)]
    per_call = []
    for cid in call_ids:
        seqs = call_sequences(batches * size, rng)
        chunks = [seqs[i : i + size] for i in range(0, len(seqs), size)]
        per_call.append(
            [
                (
                    http_request(
                        "POST",
                        f"/v1/call/stream/{cid}/batch",
                        orjson.dumps({"packets": [packet_dict(s, data[s % 64]) for s in chunk]}),
                    ),
                    len(chunk),
                )
                for chunk in chunks
            ]
        )
    return Workload(list(_interleave_sized(per_call)), call_ids, _completes(call_ids))


def _completes(call_ids: Sequence[str]) -> list[bytes]:
    return [http_request("POST", f"/v1/call/complete/{cid}") for cid in call_ids]


def _interleave(per_call: list[list[bytes]]) -> Iterator[tuple[bytes, int]]:
    for k in range(max(len(r) for r in per_call)):
        for reqs in per_call:
            if k < len(reqs):
                yield reqs[k], 1


def _interleave_sized(per_call: list[list[tuple[bytes, int]]]) -> Iterator[tuple[bytes, int]]:
    for k in range(max(len(r) for r in per_call)):
        for reqs in per_call:
            if k < len(reqs):
                yield reqs[k]


async def _connections(port: int, n: int) -> list[Connection]:
    return list(await asyncio.gather(*(Connection.open(port) for _ in range(n))))


async def closed_loop(
    port: int, requests: Sequence[tuple[bytes, int]], connections: int, max_s: float
) -> Result:
    """`connections` connections send back to back until the requests or the time run out."""
    conns = await _connections(port, connections)
    result = Result()
    it = iter(requests)
    perf = time.perf_counter
    deadline = perf() + max_s

    async def drive(conn: Connection) -> None:
        for raw, items in it:
            sent = perf()
            status, _ = await conn.request(raw)
            done = perf()
            result.record(status, done - sent, items)
            if done > deadline:
                return

    return await _drive_all(conns, drive, result, perf())


async def open_loop(
    port: int, requests: Sequence[tuple[bytes, int]], rate: float, connections: int
) -> Result:
    """Request i is due at t0 + i/rate; latency is measured from that due time."""
    conns = await _connections(port, connections)
    result = Result()
    perf = time.perf_counter
    next_index = 0
    t0 = perf() + 0.05

    async def drive(conn: Connection) -> None:
        nonlocal next_index
        while next_index < len(requests):
            i = next_index
            next_index += 1
            due = t0 + i / rate
            wait = due - perf()
            if wait > 0:
                await asyncio.sleep(wait)
            raw, items = requests[i]
            status, _ = await conn.request(raw)
            result.record(status, perf() - due, items)

    return await _drive_all(conns, drive, result, t0)


async def _drive_all(
    conns: list[Connection],
    drive: Callable[[Connection], Awaitable[None]],
    result: Result,
    t0: float,
) -> Result:
    """Run `drive` on every connection at once; the clock stops when the last one is done."""
    try:
        await asyncio.gather(*(drive(c) for c in conns))
    finally:
        result.elapsed_s = time.perf_counter() - t0
        for c in conns:
            c.close()
    return result


async def send_all(port: int, raws: Sequence[bytes], connections: int) -> Result:
    return await closed_loop(port, [(r, 1) for r in raws], connections, max_s=600)
