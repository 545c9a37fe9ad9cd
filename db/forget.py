"""Redis side of erasure: a call's keys, its place in its shard's indexes, and its events in the
live feed go; its done marker becomes a tombstone (packets for the id stay refused for good).

Every step is idempotent, so an erasure cut short by a dead worker is finished by a re-run."""

from __future__ import annotations

from db.events import feed_key, parse
from db.keys import EVENTS, call_keys
from db.redis_client import RedisClient, execute, is_cluster, text_of

# The done marker of an erased call (db/lua/release.lua leaves it without expiry).
ERASED = "erased"
FEED_PAGE = 1000  # events read per round trip while looking for a call's


class CallRedis:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def state(self, call_id: str) -> str | None:
        """The state Redis holds for the call (IN_PROGRESS, COMPLETED, or a final one while its
        hash lingers); None if it holds no hash."""
        raw = await self.redis.hget(call_keys(call_id).meta, "state")  # type: ignore[misc]
        return text_of(raw) if raw is not None else None

    async def known(self, call_id: str) -> bool:
        """Redis knows the call: it is live, or finished recently (its hash or done marker)."""
        keys = call_keys(call_id)
        return bool(await self.redis.exists(keys.meta, keys.done))

    async def busy(self, call_id: str) -> bool:
        """A worker works on the call now (it holds the call's lease or its transcription
        lock), or will (the call is completed and not yet released: in its shard's pending
        index, which the reaper watches)."""
        keys = call_keys(call_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.lease, keys.transcribing)
            pipe.zscore(keys.shard.pending, call_id)
            held, pending = await execute(pipe)
        return bool(held) or pending is not None

    async def tombstone(self, call_id: str) -> None:
        """Packets for the id are refused from now on, for good (the ingest script refuses a
        call whose done marker exists)."""
        await self.redis.set(call_keys(call_id).done, ERASED)

    async def forget(self, call_id: str) -> None:
        """Every key of the call but its done marker, and its entries in the shard's indexes."""
        keys = call_keys(call_id)
        gone = [k for k in keys.all if k != keys.done]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(*gone)
            for index in (
                keys.shard.idle,
                keys.shard.unflushed,
                keys.shard.pending,
                keys.shard.segments,
            ):
                pipe.zrem(index, call_id)
            await execute(pipe)

    async def forget_events(
        self, call_id: str, from_ms: int | None = None, to_ms: int | None = None
    ) -> int:
        """Delete the call's events from the live feed (and, on a cluster, from its shard's
        outbox, where they wait for the relay); returns how many. Event ids are times: with
        the call's bounds (`from_ms`, `to_ms`, epoch ms) only that stretch is read, so erasing
        an old call costs one read once the capped feed (EVENTS_MAX_LEN) has moved past it."""
        streams = [EVENTS]
        if is_cluster(self.redis):
            streams.append(feed_key(self.redis, call_id))
        last = "+" if to_ms is None else str(to_ms)
        gone = 0
        for stream in streams:
            start = "-" if from_ms is None else str(from_ms)
            while True:
                entries = await self.redis.xrange(stream, min=start, max=last, count=FEED_PAGE)
                if not entries:
                    break
                mine = [e.id for e in parse(entries) if e.call_id == call_id]
                if mine:
                    gone += int(await self.redis.xdel(stream, *mine))
                start = "(" + text_of(entries[-1][0])
                if len(entries) < FEED_PAGE:
                    break
        return gone
