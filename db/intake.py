"""The write side of live calls: append packets and complete a call, each one atomic script call
(one Redis round trip), plus what a call is opened with. Nothing here touches PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import orjson
from redis.commands.core import AsyncScript

from db.events import FeedLimits, feed_key, first_packet_payload, payload, state_event
from db.keys import CallKeys, call_keys
from db.packets import Outcome, PacketFields, PacketResult
from db.pipelining import Replication, ScriptPipeline, run_scripts
from db.redis_client import RedisClient
from db.scripts import Script, register


class CallCompleted(Exception):
    """The call was completed before these packets arrived; nothing was stored."""


class CallCap(IntEnum):
    """A per-call cap, numbered as db/lua/ingest.lua reports it."""

    PACKETS = 1  # unique packets stored
    BYTES = 2  # UTF-8 bytes of the data of those packets


class TailFull(Exception):
    """The call's unflushed tail holds its bound (Segmenting.max_tail per track): the flush is
    behind; nothing of the batch was stored."""

    def __init__(self, call_id: str, entries: int, limit: int) -> None:
        super().__init__(f"call {call_id}: its unflushed tail holds {entries} entries (>= {limit})")
        self.call_id, self.entries, self.limit = call_id, entries, limit


class CallFull(Exception):
    """The packets would take the call past one of its caps; nothing of them was stored."""

    def __init__(self, call_id: str, cap: CallCap, limit: int, stored: int, adding: int) -> None:
        super().__init__(f"call {call_id}: {stored} + {adding} {cap.name.lower()} > {limit}")
        self.call_id = call_id
        self.cap = cap  # which cap: packets or data bytes
        self.limit = limit  # the cap's value
        self.stored = stored  # what the call holds already (packets, or data bytes)
        self.adding = adding  # what the refused request's new packets would have added


# How long a call's set of open feeds outlives its last opening: only a feed whose process died
# without ending it is ever left there (the idle sweep completes that call), so it must not keep
# Redis' memory for long, nor end before the longest call a PBX carries.
FEEDS_TTL_S = 12 * 3600


@dataclass(frozen=True, slots=True)
class CallLimits:
    """What one call may hold: MAX_CALL_PACKETS unique packets, MAX_CALL_BYTES bytes of data
    (core/builders.py builds it from the settings)."""

    max_packets: int
    max_bytes: int


# The caps of an intake built without limits (tests and benchmarks not about them): none a call
# can reach. The API and the worker always pass the settings' (core/builders.py).
UNCAPPED = CallLimits(max_packets=2**53 - 1, max_bytes=2**53 - 1)


@dataclass(frozen=True, slots=True)
class Segmenting:
    """When a live call's unflushed tail is due for a segment flush: `entries` packets per
    track (a segment's length in 20 ms frames) or `seconds` since its oldest entry arrived,
    whichever comes first; `entries` 0 never asks (the call is flushed at its end only)."""

    entries: int
    seconds: float
    # The most segments a track's unflushed tail may hold before new packets are refused (the
    # worker is behind: backpressure), so a client faster than the flush cannot grow Redis
    # without bound; 0: no bound.
    max_segments: int = 0

    @classmethod
    def of_seconds(cls, seconds: float, max_segments: int = 0, frame_s: float = 0.02) -> Segmenting:
        return cls(max(1, round(seconds / frame_s)), seconds, max_segments)

    @property
    def max_tail(self) -> int:
        """Entries a track's tail may hold (0: no bound)."""
        return self.entries * self.max_segments if self.entries else 0


NO_SEGMENTS = Segmenting(0, 0.0)


class Appended(list[PacketResult]):
    """What one append stored: each packet's outcome, in order, and the number of the segment
    flush it asked for (0: none), which the caller enqueues (jobs/queue.py)."""

    def __init__(self, results: list[PacketResult], segment_asked: int) -> None:
        super().__init__(results)
        self.segment_asked = segment_asked


_OUTCOMES = tuple(Outcome)  # by the number the script answers (Outcome(n) is an enum lookup)


class Completion(StrEnum):
    """What db/lua/complete.lua found."""

    COMPLETED = "completed"  # this request completed the call
    ALREADY = "already"  # an earlier one did
    UNKNOWN = "unknown"  # no packet was ever received for the call
    ACTIVE = "active"  # the idle sweep's call is talking again: left open


class CallIntake:
    """The call keys of one Redis, written only through the ingest and complete scripts."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        pipelined: bool = False,
        limits: CallLimits | None = None,
        feed: FeedLimits,
        replication: Replication | None = None,
        segmenting: Segmenting = NO_SEGMENTS,
    ) -> None:
        """`pipelined`: share Redis round trips between concurrent ingestion requests (the API).
        The scripts append the call's events to the live feed within `feed`'s limits.
        `replication`: append and complete return only once the call's replicas have the write
        (WAIT), else raise NotReplicated."""
        self.redis = redis
        self.limits = limits or UNCAPPED
        self.feed = feed
        self.replication = replication
        self.segmenting = segmenting
        self._pipeline = ScriptPipeline(redis, replication=replication) if pipelined else None
        self._ingest = register(redis, Script.INGEST)
        self._complete = register(redis, Script.COMPLETE)
        self._replayed = register(redis, Script.REPLAYED)

    async def append(self, call_id: str, packets: Sequence[PacketFields]) -> Appended:
        """Store packets in one round trip, or none of them: raises CallCompleted if the call is
        already done, CallFull if its new packets would take it past one of its caps, and
        NotReplicated (they may be stored) if too few replicas confirmed them."""
        # Timestamps travel as text: Lua numbers would keep only 14 significant digits. One flat
        # array (the script's cjson builds one table, not one a packet), at the same cost here;
        # the data as arguments of their own, after the others (ingest.lua says why).
        flat: list[int | str] = []
        for p in packets:
            flat += (p.track.number, p.sequence, repr(p.timestamp))
        encoded = orjson.dumps(flat)
        limits = self.limits
        now = time.time()
        args: list[Any] = [
            call_id,
            repr(now),
            limits.max_packets,
            limits.max_bytes,
            encoded,
            self.feed.max_len,
            self.feed.progress_interval_s,
            self.segmenting.entries,
            self.segmenting.seconds,
            # The call's first packet's event, if this batch holds it (the script decides).
            first_packet_payload(call_id, now),
            self.segmenting.max_tail,
            *[p.data for p in packets],
        ]
        script_keys = _ingest_keys(call_keys(call_id), feed_key(self.redis, call_id))
        if self._pipeline is not None:
            raw = await self._pipeline.run(self._ingest, script_keys, args)
        else:
            raw = await self._replicated(self._ingest, script_keys, args)
        if raw and raw[0] == -1:
            raise CallCompleted(call_id)
        if raw and raw[0] == -2:
            cap = CallCap(int(raw[1]))
            limit = limits.max_packets if cap is CallCap.PACKETS else limits.max_bytes
            raise CallFull(call_id, cap, limit, int(raw[2]), int(raw[3]))
        if raw and raw[0] == -3:
            raise TailFull(call_id, int(raw[1]), int(raw[2]))
        results = [
            PacketResult(p.sequence, _OUTCOMES[raw[2 * i]], int(raw[2 * i + 1]))
            for i, p in enumerate(packets)
        ]
        return Appended(results, int(raw[-1]))

    async def complete(
        self, call_id: str, reason: str, idle_cutoff: float | None = None
    ) -> Completion:
        """Complete a call once. With `idle_cutoff`, only if no packet came after it."""
        keys = call_keys(call_id)
        now = time.time()
        outcome, _state = await self._replicated(
            self._complete,
            [
                keys.meta,
                keys.done,
                keys.shard.idle,
                keys.shard.pending,
                feed_key(self.redis, call_id),
            ],
            [
                call_id,
                repr(now),
                reason,
                "" if idle_cutoff is None else idle_cutoff,
                self.feed.max_len,
                payload(state_event(call_id, "COMPLETED", reason), now),
            ],
        )
        return Completion(outcome.decode() if isinstance(outcome, bytes) else outcome)

    async def _replicated(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """One script call, through run_scripts as pipelined ones go (with `replication`, WAIT
        follows on its connection; a cluster's failure modes are read alike)."""
        (outcome,) = await run_scripts(self.redis, [(script, keys, args)], self.replication)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def open_call(self, call_id: str, metadata: dict[str, Any], ttl_s: int) -> bool:
        """Keep what a call was opened with (a media stream's start); the first opening wins.
        The expiry only bounds a call that never sends a packet; the release shortens it."""
        key = call_keys(call_id).metadata
        return bool(await self.redis.set(key, orjson.dumps(metadata), nx=True, ex=ttl_s))

    async def metadata(self, call_id: str) -> dict[str, Any] | None:
        """What the call was opened with (the first opening), if it was opened."""
        raw = await self.redis.get(call_keys(call_id).metadata)
        found = orjson.loads(raw) if raw else None
        return found if isinstance(found, dict) else None

    async def feed_opened(self, call_id: str, feed_id: str) -> None:
        """A feed of the call (one socket of a PBX) is open: the call waits for it to end."""
        key = call_keys(call_id).feeds
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, feed_id)
            pipe.expire(key, FEEDS_TTL_S)
            await pipe.execute()

    async def feed_ended(self, call_id: str, feed_id: str) -> int:
        """The feed ended: how many of the call's feeds are still open. Two feeds ending at once
        may both see 0 (completion is exactly once anyway); one of them always does."""
        key = call_keys(call_id).feeds
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.srem(key, feed_id)
            pipe.scard(key)
            _removed, still_open = await pipe.execute()
        return int(still_open)

    async def mark_replayed(self, call_id: str) -> None:
        """A dead letter was replayed (FAILED -> COMPLETED in PostgreSQL): put the call back
        under the reaper's watch, and tell the live feed, in one atomic step."""
        now = time.time()
        await self._replayed(
            keys=[call_keys(call_id).shard.pending, feed_key(self.redis, call_id)],
            args=[
                call_id,
                repr(now),
                self.feed.max_len,
                payload(state_event(call_id, "COMPLETED", "replay"), now),
            ],
        )


def _ingest_keys(keys: CallKeys, events: str) -> list[str]:
    """The keys of db/lua/ingest.lua, in its order: all in the call's slot."""
    return [
        keys.packets,
        keys.meta,
        keys.runs,
        keys.runs_outbound,
        keys.done,
        keys.shard.idle,
        keys.shard.unflushed,
        events,
        keys.shard.segments,
    ]
