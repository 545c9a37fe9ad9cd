"""The write side of live calls: append packets and complete a call, each one atomic script call
(one Redis round trip), plus what a call is opened with. Nothing here touches PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import orjson
from redis.asyncio import Redis

from db.keys import BITMAP_SEQUENCE_LIMIT, IDLE_INDEX, PENDING_INDEX, UNFLUSHED_INDEX, call_keys
from db.packets import Outcome, PacketFields, PacketResult
from db.pipelining import ScriptPipeline
from db.scripts import Script, register


class CallCompleted(Exception):
    """The call was completed before these packets arrived; nothing was stored."""


class Completion(StrEnum):
    """What db/lua/complete.lua found."""

    COMPLETED = "completed"  # this request completed the call
    ALREADY = "already"  # an earlier one did
    UNKNOWN = "unknown"  # no packet was ever received for the call
    ACTIVE = "active"  # the idle sweep's call is talking again: left open


class CallIntake:
    """The call keys of one Redis, written only through the ingest and complete scripts."""

    def __init__(self, redis: Redis, *, pipelined: bool = False) -> None:
        """`pipelined`: share Redis round trips between concurrent ingestion requests (the API)."""
        self.redis = redis
        self._pipeline = ScriptPipeline(redis) if pipelined else None
        self._ingest = register(redis, Script.INGEST)
        self._complete = register(redis, Script.COMPLETE)

    async def append(self, call_id: str, packets: Sequence[PacketFields]) -> list[PacketResult]:
        """Store packets in one round trip. Raises CallCompleted if the call is already done."""
        keys = call_keys(call_id)
        # Timestamps travel as text: Lua numbers would keep only 14 significant digits.
        encoded = orjson.dumps([(p.sequence, repr(p.timestamp), p.data) for p in packets])
        args: list[Any] = [call_id, repr(time.time()), BITMAP_SEQUENCE_LIMIT, encoded]
        script_keys = [
            keys.packets,
            keys.meta,
            keys.seen,
            keys.seen_high,
            keys.done,
            IDLE_INDEX,
            UNFLUSHED_INDEX,
        ]
        if self._pipeline is not None:
            raw = await self._pipeline.run(self._ingest, script_keys, args)
        else:
            raw = await self._ingest(keys=script_keys, args=args)
        if raw and raw[0] == -1:
            raise CallCompleted(call_id)
        return [
            PacketResult(p.sequence, Outcome(int(raw[2 * i])), int(raw[2 * i + 1]))
            for i, p in enumerate(packets)
        ]

    async def complete(
        self, call_id: str, reason: str, idle_cutoff: float | None = None
    ) -> Completion:
        """Complete a call once. With `idle_cutoff`, only if no packet came after it."""
        keys = call_keys(call_id)
        outcome, _state = await self._complete(
            keys=[keys.meta, keys.done, IDLE_INDEX, PENDING_INDEX],
            args=[call_id, repr(time.time()), reason, "" if idle_cutoff is None else idle_cutoff],
        )
        return Completion(outcome.decode() if isinstance(outcome, bytes) else outcome)

    async def open_call(self, call_id: str, metadata: dict[str, Any], ttl_s: int) -> bool:
        """Keep what a call was opened with (a media stream's start); the first opening wins.
        The expiry only bounds a call that never sends a packet; the release shortens it."""
        key = call_keys(call_id).metadata
        return bool(await self.redis.set(key, orjson.dumps(metadata), nx=True, ex=ttl_s))

    async def mark_pending(self, call_id: str) -> None:
        """Put a call (back) under the reaper's watch, e.g. after a dead-letter replay."""
        await self.redis.zadd(PENDING_INDEX, {call_id: time.time()})
