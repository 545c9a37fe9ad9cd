"""Reads of what Redis knows: a live call's record, its gaps, and the indexes that the status,
the listing, the idle sweep and the reaper walk."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from db.keys import ALL_SHARDS, ShardKeys, call_keys
from db.record import CallRecord, from_redis
from db.redis_client import RedisClient, RedisPipeline, execute, text_of
from db.sequences import missing_between_runs


@dataclass(frozen=True, slots=True)
class IndexCounts:
    live: int  # IN_PROGRESS calls
    unflushed: int  # calls not yet in PostgreSQL, live ones included
    pending: int  # completed calls not yet ARCHIVED or FAILED
    oldest_pending_at: float | None  # epoch seconds of the longest-waiting completion


@dataclass(frozen=True, slots=True)
class SegmentRequest:
    segment: int  # the number of the segment asked for
    asked_at: float | None  # when; None once its flush is done
    completed: bool  # the call has ended: its own job flushes what is left


class LiveCalls:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def get(self, call_id: str, missing_cap: int) -> CallRecord | None:
        (found,) = await self.get_many([call_id], missing_cap)
        return found

    async def get_many(self, call_ids: Sequence[str], missing_cap: int) -> list[CallRecord | None]:
        """What Redis holds of each call, in order; None for a call it does not know. Two round
        trips however many calls: their hashes, then the gaps of those that have some."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                keys = call_keys(call_id)
                pipe.hgetall(keys.meta)
                pipe.get(keys.metadata)
            raw = await execute(pipe)
        found = [
            from_redis(call_id, meta, metadata, []) if meta else None
            for call_id, meta, metadata in zip(call_ids, raw[::2], raw[1::2], strict=True)
        ]
        missing = await self._missing([c for c in found if c is not None], missing_cap)
        return [_with_missing(c, missing) if c is not None else None for c in found]

    async def record(
        self, call_id: str, meta: dict[bytes, bytes], metadata: bytes | None, missing_cap: int
    ) -> CallRecord:
        """The record of a live call whose hash (and metadata) the caller has read already."""
        found = from_redis(call_id, meta, metadata, [])
        return _with_missing(found, await self._missing([found], missing_cap))

    async def missing_sequences(self, call: CallRecord, cap: int) -> list[int]:
        """The first `cap` gaps, read from the call's runs of sequences (not from its stream)."""
        return (await self._missing([call], cap)).get(call.call_id, [])

    async def _missing(self, calls: Sequence[CallRecord], cap: int) -> dict[str, list[int]]:
        """The missing sequences of the calls that have some, by call id, in one round trip.
        Each gap lies between two runs, so `cap + 1` runs answer: the cost follows the cap and
        the gaps found, never the length of the call."""
        gapped = [c for c in calls if cap > 0 and c.missing_count > 0]
        if not gapped:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for call in gapped:
                pipe.zrange(call_keys(call.call_id).runs, 0, cap, withscores=True)
            found = await execute(pipe)
        missing: dict[str, list[int]] = {}
        for call, runs in zip(gapped, found, strict=True):
            pairs = [(int(first), int(last)) for first, last in runs]
            # Runs read after the hash may know of later packets: keep to what it said.
            upto = call.last_sequence if call.last_sequence is not None else -1
            missing[call.call_id] = missing_between_runs(pairs, cap, upto)
        return missing

    async def idle(self, cutoff: float, limit: int = 1000) -> list[str]:
        """IN_PROGRESS calls whose last packet came before `cutoff` (at most `limit`)."""
        found = await self._each_shard(
            lambda pipe, shard: pipe.zrangebyscore(shard.idle, "-inf", cutoff, 0, limit)
        )
        return [text_of(m) for ids in found for m in ids][:limit]

    async def started_before(self, cutoff: float, limit: int = 1000) -> list[str]:
        """IN_PROGRESS calls whose first packet came before `cutoff` (at most `limit`): the
        unflushed index is scored by creation and holds every live call; those still in the
        idle index are the live ones. Two round trips."""
        found = await self._each_shard(
            lambda pipe, shard: pipe.zrangebyscore(shard.unflushed, "-inf", cutoff, 0, limit)
        )
        candidates = [text_of(m) for ids in found for m in ids][:limit]
        if not candidates:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in candidates:
                pipe.zscore(call_keys(call_id).shard.idle, call_id)
            live = await execute(pipe)
        return [c for c, score in zip(candidates, live, strict=True) if score is not None]

    async def pending(self, completed_before: float, limit: int = 1000) -> list[str]:
        """Completed calls not yet ARCHIVED/FAILED, completed before the given time."""
        found = await self._each_shard(
            lambda pipe, shard: pipe.zrangebyscore(
                shard.pending, "-inf", completed_before, 0, limit
            )
        )
        return [text_of(m) for ids in found for m in ids][:limit]

    async def segments_due(self, asked_before: float, limit: int = 1000) -> list[str]:
        """Live calls whose segment flush was asked for before the given time and not done."""
        found = await self._each_shard(
            lambda pipe, shard: pipe.zrangebyscore(shard.segments, "-inf", asked_before, 0, limit)
        )
        return [text_of(m) for ids in found for m in ids][:limit]

    async def segment_request(self, call_id: str) -> SegmentRequest | None:
        """The segment flush the call's ingest asked for last; None if Redis no longer holds
        the call."""
        meta = call_keys(call_id).meta
        fields = ["seg_asked", "seg_asked_at", "state"]
        asked, asked_at, state = await self.redis.hmget(meta, fields)  # type: ignore[misc]
        if asked is None:
            return None
        return SegmentRequest(
            int(asked),
            float(asked_at) if asked_at is not None else None,
            state is not None and text_of(state) != "IN_PROGRESS",
        )

    async def defer_segment(self, call_id: str, score: float) -> None:
        """Move the call's entry in the segments index, if it is still there (a flush that is done
        takes it out, and this must not put it back)."""
        await self.redis.zadd(call_keys(call_id).shard.segments, {call_id: score}, xx=True)

    async def drop_segment(self, call_id: str) -> None:
        await self.redis.zrem(call_keys(call_id).shard.segments, call_id)

    async def unflushed_page(
        self, before: tuple[float, str] | None, limit: int
    ) -> list[tuple[str, float]]:
        """Calls not yet in PostgreSQL, newest first, strictly after the keyset `before`: the
        newest of every shard, merged."""
        max_score: float | str = "+inf" if before is None else before[0]
        found = await self._each_shard(
            lambda pipe, shard: pipe.zrevrangebyscore(
                shard.unflushed, max_score, "-inf", start=0, num=limit + 64, withscores=True
            )
        )
        page = [(text_of(member), float(score)) for raw in found for member, score in raw]
        if before is not None:
            page = [(c, s) for c, s in page if (s, c) < (before[0], before[1])]
        page.sort(key=lambda entry: (entry[1], entry[0]), reverse=True)
        return page[:limit]

    async def counts(self) -> IndexCounts:
        def count(pipe: RedisPipeline, shard: ShardKeys) -> None:
            pipe.zcard(shard.idle)
            pipe.zcard(shard.unflushed)
            pipe.zcard(shard.pending)
            pipe.zrange(shard.pending, 0, 0, withscores=True)

        found = await self._each_shard(count)
        shards = [found[i : i + 4] for i in range(0, len(found), 4)]
        oldest = [s[3][0][1] for s in shards if s[3]]
        return IndexCounts(
            sum(s[0] for s in shards),
            sum(s[1] for s in shards),
            sum(s[2] for s in shards),
            min(oldest) if oldest else None,
        )

    async def pending_count(self) -> int:
        """Completed calls not yet ARCHIVED/FAILED: one ZCARD per shard, one round trip."""
        found = await self._each_shard(lambda pipe, shard: pipe.zcard(shard.pending))
        return sum(found)

    async def _each_shard(self, queue: Callable[[RedisPipeline, ShardKeys], object]) -> list[Any]:
        """The answers of `queue`'s commands for every shard, in shard order: one round trip
        (per node, on a cluster)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in ALL_SHARDS:
                queue(pipe, shard)
            return list(await execute(pipe))


def _with_missing(call: CallRecord, missing: dict[str, list[int]]) -> CallRecord:
    found = missing.get(call.call_id)
    return call.model_copy(update={"missing_sequences": found}) if found else call
