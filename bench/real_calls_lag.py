"""The real-calls benchmark's frame-to-stored lag, sampled while calls are live.

The WebSocket acknowledges nothing per frame. A frame is stored once the
call's stored-packet count includes it: the call sends in order on one socket, so a count of c
means its first c frames. RedisLagSampler reads every live call's count straight from Redis
every 100 ms, in one pipeline that starts with TIME: a read's lag is the age, at the moment Redis
read it, of the oldest frame sent (handed to the socket) that the count leaves out; 0 when it
includes every frame sent by then. LagSampler reads the same through the status API
(GET /v1/calls/{id}, round-robin, at most `reads_per_s` in all) and ages that frame to when the
answer arrived: an upper bound that includes the API's read (its lower bound, to when the read
was sent, beside it). Both count per track when the status has `tracks`, else half the total
(a server without tracks stores both as one sequence).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis.asyncio import Redis

from bench.real_calls_client import CallRun, read_status, stored_ticks
from db.record import HASH_FIELDS

RECEIVED_FIELD = HASH_FIELDS["packets_received"]


@dataclass
class LagSampler:
    """Reads live calls' statuses round-robin; each read is one lag sample (module docstring)."""

    http: httpx.AsyncClient
    live: dict[str, CallRun]
    reads_per_s: float = 64.0
    interval_s: float = 0.25
    upper_ms: array[float] = field(default_factory=lambda: array("f"))
    lower_ms: array[float] = field(default_factory=lambda: array("f"))
    read_ms: array[float] = field(default_factory=lambda: array("f"))
    errors: int = 0
    _next: int = 0

    async def run(self) -> None:
        per_round = max(1, round(self.reads_per_s * self.interval_s))
        while True:
            began = time.perf_counter()
            runs = list(self.live.values())
            if runs:
                picked = [
                    runs[(self._next + i) % len(runs)] for i in range(min(per_round, len(runs)))
                ]
                self._next = (self._next + len(picked)) % max(len(runs), 1)
                await asyncio.gather(*(self._sample(r) for r in picked))
            await asyncio.sleep(max(0.0, self.interval_s - (time.perf_counter() - began)))

    async def _sample(self, run: CallRun) -> None:
        asked = time.time()
        try:
            status = await read_status(self.http, run.call_id)
        except httpx.HTTPError:
            self.errors += 1
            return
        answered = time.time()
        if status is None or run.stop_at is not None:
            return
        oldest = stored_ticks(status)  # the first tick not counted on both tracks
        sent = run.sent_at
        self.read_ms.append(1000 * (answered - asked))
        waiting = oldest < len(sent)
        self.upper_ms.append(1000 * (answered - sent[oldest]) if waiting else 0.0)
        self.lower_ms.append(
            1000 * max(0.0, asked - sent[oldest]) if waiting and sent[oldest] < asked else 0.0
        )


@dataclass
class RedisLagSampler:
    """Every `interval_s`, every live call's stored-packet count read straight from Redis (one
    pipeline of HGETs): each read is one lag sample, as LagSampler's but without the API's
    read in it. The count is the call's hash field that db/record.py names for packets_received
    (the server's own definition); the hash is found among the call's keys by that field."""

    redis: Redis
    live: dict[str, CallRun]
    interval_s: float = 0.1
    lag_ms: array[float] = field(default_factory=lambda: array("f"))
    read_ms: array[float] = field(default_factory=lambda: array("f"))
    _hash: dict[str, str | None] = field(default_factory=dict)

    async def run(self) -> None:
        while True:
            began = time.perf_counter()
            await self.sample()
            await asyncio.sleep(max(0.0, self.interval_s - (time.perf_counter() - began)))

    async def sample(self) -> None:
        runs = list(self.live.values())
        for run in runs:
            if run.call_id not in self._hash or self._hash[run.call_id] is None:
                self._hash[run.call_id] = await self._find(run.call_id)
        known = [(r, key) for r in runs if (key := self._hash.get(r.call_id)) is not None]
        if not known:
            return
        asked = time.perf_counter()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()  # the moment Redis reads the counts: the pipeline runs as one batch
            for _, key in known:
                pipe.hget(key, RECEIVED_FIELD)
            (seconds, micros), *counts = await pipe.execute()
        self.read_ms.append(1000 * (time.perf_counter() - asked))
        read_at = seconds + micros / 1e6
        for (run, _), count in zip(known, counts, strict=True):
            if run.stop_at is not None:
                continue
            oldest, sent = int(count or 0) // 2, run.sent_at  # in order: inbound, outbound
            waiting = oldest < len(sent) and sent[oldest] < read_at
            self.lag_ms.append(1000 * (read_at - sent[oldest]) if waiting else 0.0)

    async def _find(self, call_id: str) -> str | None:
        async for key in self.redis.scan_iter(match=f"*:call:{call_id}:*", count=1000):
            if await self.redis.type(key) not in (b"hash", "hash"):
                continue
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hexists(key, RECEIVED_FIELD)
                (has,) = await pipe.execute()
            if has:
                return str(key.decode())
        return None


def percentile(values: Any, q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


@contextlib.asynccontextmanager
async def sampling(*samplers: LagSampler | RedisLagSampler) -> Any:
    tasks = [asyncio.create_task(s.run()) for s in samplers]
    try:
        yield samplers
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
