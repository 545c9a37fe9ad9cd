"""Backpressure: while more completed calls wait for the worker than BACKLOG_LIMIT, new calls are
refused (503 with Retry-After) and live calls go on; a live call never loses a packet to it.

The backlog is read from Redis at most once a second per process (a ZCARD), on the ingestion
path itself: cheap, shared by every API process, and late by a second at most. Whether a call is
new is asked only while the backlog is over its limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.errors import Overloaded
from db.keys import call_keys
from db.live import LiveCalls
from db.redis_client import RedisClient

REFRESH_S = 1.0


@dataclass
class Backlog:
    redis: RedisClient
    limit: int  # 0: no limit
    waiting: int = 0
    _read_at: float = field(default=float("-inf"))

    async def size(self) -> int:
        now = time.monotonic()
        if now - self._read_at >= REFRESH_S:
            self._read_at = now
            self.waiting = await LiveCalls(self.redis).pending_count()
        return self.waiting

    async def over(self) -> bool:
        return self.limit > 0 and await self.size() > self.limit

    async def admit(self, call_id: str) -> None:
        """Raise Overloaded for a new call while the backlog is over its limit."""
        if self.limit <= 0:
            return
        fresh = time.monotonic() - self._read_at < REFRESH_S
        if fresh and self.waiting <= self.limit:  # the common case: no await, no round trip
            return
        if not await self.over():
            return
        if await self.redis.exists(call_keys(call_id).meta):
            return  # a live call: its packets are always taken
        raise Overloaded(
            f"{self.waiting} completed calls wait for the worker (BACKLOG_LIMIT {self.limit}): "
            "new calls are refused for now; retry after Retry-After",
            {"Retry-After": "5"},
        )
