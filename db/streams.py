"""Per-call Redis access: the one-round-trip ingest script, completion, reads for flush/status."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from importlib import resources
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

from db.keys import (
    AI_BREAKER,
    BITMAP_SEQUENCE_LIMIT,
    IDLE_INDEX,
    PENDING_INDEX,
    UNFLUSHED_INDEX,
    call_keys,
)
from db.pipelining import ScriptPipeline
from db.sequences import bits_set, missing_between


def _load_lua(name: str) -> str:
    return resources.files("db").joinpath("lua", name).read_text()


INGEST_LUA = _load_lua("ingest.lua")
COMPLETE_LUA = _load_lua("complete.lua")


class Outcome(IntEnum):
    IN_ORDER = 0
    DUPLICATE = 1
    OUT_OF_ORDER = 2
    AFTER_GAP = 3


class PacketFields(Protocol):
    """What append() reads of a packet: the API's validated models pass as they are."""

    @property
    def sequence(self) -> int: ...
    @property
    def timestamp(self) -> float: ...
    @property
    def data(self) -> str: ...


@dataclass(frozen=True, slots=True)
class NewPacket:
    sequence: int
    timestamp: float
    data: str


@dataclass(frozen=True, slots=True)
class PacketResult:
    sequence: int
    outcome: Outcome
    gap_from: int  # first missing sequence when outcome is AFTER_GAP

    @property
    def duplicate(self) -> bool:
        return self.outcome is Outcome.DUPLICATE


@dataclass(frozen=True, slots=True)
class StoredPacket:
    sequence: int
    timestamp: float
    data: str
    received_at: float  # epoch seconds, from the stream entry id


@dataclass(frozen=True, slots=True)
class LiveCall:
    """What Redis knows of a call that PostgreSQL may not have yet."""

    call_id: str
    state: str
    packets_received: int
    duplicate_packets: int
    out_of_order_packets: int
    first_sequence: int | None
    last_sequence: int | None
    created_at: float
    last_packet_at: float
    completed_at: float | None
    completion_reason: str | None
    metadata: dict[str, Any] | None = None

    @property
    def missing_count(self) -> int:
        if self.first_sequence is None or self.last_sequence is None:
            return 0
        return self.last_sequence - self.first_sequence + 1 - self.packets_received


class CallCompleted(Exception):
    """The call was completed before this packet arrived; nothing was stored."""


class CallStreams:
    """The call keys of one Redis, with the scripts registered once and called by their hash."""

    def __init__(self, redis: Redis, *, pipelined: bool = False) -> None:
        """`pipelined`: share Redis round trips between concurrent ingestion requests (the API)."""
        self.redis = redis
        self._pipeline = ScriptPipeline(redis) if pipelined else None
        self._ingest = redis.register_script(INGEST_LUA)
        self._complete = redis.register_script(COMPLETE_LUA)

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

    async def complete(self, call_id: str, reason: str, idle_cutoff: float | None = None) -> str:
        """Complete a call once; returns completed | already | unknown | active (still talking)."""
        keys = call_keys(call_id)
        outcome, _state = await self._complete(
            keys=[keys.meta, keys.done, IDLE_INDEX, PENDING_INDEX],
            args=[call_id, repr(time.time()), reason, "" if idle_cutoff is None else idle_cutoff],
        )
        return _text(outcome)

    async def idle_calls(self, cutoff: float, limit: int = 1000) -> list[str]:
        ids = await self.redis.zrangebyscore(IDLE_INDEX, "-inf", cutoff, start=0, num=limit)
        return [_text(i) for i in ids]

    async def pending_calls(self, completed_before: float, limit: int = 1000) -> list[str]:
        ids = await self.redis.zrangebyscore(
            PENDING_INDEX, "-inf", completed_before, start=0, num=limit
        )
        return [_text(i) for i in ids]

    async def live_call(self, call_id: str) -> LiveCall | None:
        (found,) = await self.live_calls([call_id])
        return found

    async def live_calls(self, call_ids: Sequence[str]) -> list[LiveCall | None]:
        """What Redis holds of each call, in order; None for a call it does not know."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                keys = call_keys(call_id)
                pipe.hgetall(keys.meta)
                pipe.get(keys.metadata)
            raw = await pipe.execute()
        return [
            _live_call(call_id, meta, metadata) if meta else None
            for call_id, meta, metadata in zip(call_ids, raw[::2], raw[1::2], strict=True)
        ]

    async def open_call(self, call_id: str, metadata: dict[str, Any], ttl_s: int) -> bool:
        """Keep what a call was opened with (a media stream's start); the first opening wins.
        The expiry only bounds a call that never sends a packet; release() shortens it."""
        return bool(
            await self.redis.set(
                call_keys(call_id).metadata, orjson.dumps(metadata), nx=True, ex=ttl_s
            )
        )

    async def unflushed_page(
        self, before: tuple[float, str] | None, limit: int
    ) -> list[tuple[str, float]]:
        """Calls not yet in PostgreSQL, newest first, strictly after the keyset `before`."""
        max_score: float | str = "+inf" if before is None else before[0]
        raw = await self.redis.zrevrangebyscore(
            UNFLUSHED_INDEX, max_score, "-inf", start=0, num=limit + 64, withscores=True
        )
        page = [(_text(member), float(score)) for member, score in raw]
        if before is not None:
            page = [(c, s) for c, s in page if (s, c) < (before[0], before[1])]
        return page[:limit]

    async def missing_sequences(self, call: LiveCall, cap: int) -> list[int]:
        first, last = call.first_sequence, call.last_sequence
        if cap <= 0 or call.missing_count <= 0 or first is None or last is None:
            return []
        keys = call_keys(call.call_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.seen)
            pipe.smembers(keys.seen_high)
            bitmap, high = await pipe.execute()
        present = bits_set(bitmap or b"", first, last)
        present += sorted(int(s) for s in high)
        return missing_between(present, first, last, cap)

    async def packet_pages(
        self, call_id: str, page_size: int = 1000
    ) -> AsyncIterator[list[StoredPacket]]:
        """Every stored packet of the call, in arrival order, a page at a time: memory stays
        bounded however long the call was."""
        stream = call_keys(call_id).packets
        start = "-"
        while True:
            entries = await self.redis.xrange(stream, min=start, max="+", count=page_size)
            if entries:
                yield [_stored_packet(entry_id, fields) for entry_id, fields in entries]
            if len(entries) < page_size:
                return
            start = "(" + _text(entries[-1][0])

    async def release(self, call_id: str, retention_s: int, marker_retention_s: int) -> None:
        """After PostgreSQL committed the final state: let the call's keys expire, drop indexes."""
        keys = call_keys(call_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in (keys.packets, keys.meta, keys.seen, keys.seen_high, keys.metadata):
                pipe.expire(key, retention_s)
            # The done marker outlives the data so late packets still get 409, not a new call.
            pipe.expire(keys.done, marker_retention_s)
            pipe.delete(keys.lease)
            pipe.zrem(PENDING_INDEX, call_id)
            pipe.zrem(UNFLUSHED_INDEX, call_id)
            pipe.zrem(IDLE_INDEX, call_id)
            await pipe.execute()

    async def overview(self, queue_name: str) -> dict[str, Any]:
        """Counts for the system status, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(IDLE_INDEX)
            pipe.zcard(UNFLUSHED_INDEX)
            pipe.zcard(PENDING_INDEX)
            pipe.zcard(queue_name)
            pipe.zrange(PENDING_INDEX, 0, 0, withscores=True)
            pipe.hgetall(AI_BREAKER)
            live, unflushed, pending, queued, oldest, breaker = await pipe.execute()
        open_until = breaker.get(b"open_until")
        return {
            "live": live,
            "unflushed": unflushed,
            "pending": pending,
            "queued_jobs": queued,
            "oldest_pending_at": oldest[0][1] if oldest else None,
            "ai_breaker_failures": int(breaker.get(b"failures", 0)),
            "ai_breaker_open_until": float(open_until) if open_until else None,
        }

    async def forget_unflushed(self, call_id: str) -> None:
        await self.redis.zrem(UNFLUSHED_INDEX, call_id)

    async def mark_pending(self, call_id: str) -> None:
        """Put a call (back) under the reaper's watch, e.g. after a dead-letter replay."""
        await self.redis.zadd(PENDING_INDEX, {call_id: time.time()})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional_int(meta: dict[bytes, bytes], field: bytes) -> int | None:
    value = meta.get(field)
    return int(value) if value is not None else None


def _optional_float(meta: dict[bytes, bytes], field: bytes) -> float | None:
    value = meta.get(field)
    return float(value) if value is not None else None


def _live_call(call_id: str, meta: dict[bytes, bytes], metadata: bytes | None) -> LiveCall:
    reason = meta.get(b"completion_reason")
    return LiveCall(
        call_id=call_id,
        metadata=orjson.loads(metadata) if metadata else None,
        state=_text(meta.get(b"state", b"IN_PROGRESS")),
        packets_received=int(meta.get(b"received", 0)),
        duplicate_packets=int(meta.get(b"duplicates", 0)),
        out_of_order_packets=int(meta.get(b"out_of_order", 0)),
        first_sequence=_optional_int(meta, b"min_seq"),
        last_sequence=_optional_int(meta, b"max_seq"),
        created_at=float(meta.get(b"created_at", 0)),
        last_packet_at=float(meta.get(b"last_packet_at", 0)),
        completed_at=_optional_float(meta, b"completed_at"),
        completion_reason=_text(reason) if reason is not None else None,
    )


def _stored_packet(entry_id: bytes | str, fields: dict[bytes, bytes]) -> StoredPacket:
    millis = int(_text(entry_id).split("-", 1)[0])
    return StoredPacket(
        sequence=int(fields[b"s"]),
        timestamp=float(fields[b"t"]),
        data=fields[b"d"].decode(),
        received_at=millis / 1000.0,
    )
