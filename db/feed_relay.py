"""The Redis side of a cluster's feed relay. On a Redis Cluster a script may touch one slot only,
so the scripts that change a call append its events to the outbox of its shard (its slot), and
the relay moves them to the one feed that readers follow (db/keys.py EVENTS), exactly once: the
feed keeps, per shard, the last outbox entry it took (FEED_CURSORS, in the feed's slot), and
relay.lua appends a shard's events only if that cursor is still where they were read from.
A single Redis needs none of this: the scripts append to the feed itself."""

from __future__ import annotations

from db.events import FeedLimits
from db.keys import ALL_SHARDS, EVENTS, FEED_CURSORS, FEED_RELAY_LEASE
from db.redis_client import RedisClient, execute, text_of
from db.scripts import Script, register

PAGE = 500  # events read from one outbox per step


class FeedRelay:
    def __init__(self, redis: RedisClient, limits: FeedLimits) -> None:
        self.redis = redis
        self.limits = limits
        self._relay = register(redis, Script.RELAY)
        self._renew = register(redis, Script.LEASE_RENEW)

    async def hold(self, holder: str, ttl_ms: int) -> bool:
        """Take or keep the relay's lease: one relay at a time does the work (two would still
        append every event once, at twice the cost)."""
        if await self.redis.set(FEED_RELAY_LEASE, holder, nx=True, px=ttl_ms):
            return True
        return bool(await self._renew(keys=[FEED_RELAY_LEASE], args=[holder, ttl_ms]))

    async def step(self) -> int:
        """Move what every outbox holds past the feed's cursor (up to PAGE each); the number
        of events moved. Two round trips to read (one per node), one to append, one to trim."""
        cursors = {
            text_of(k): text_of(v)
            for k, v in (await self.redis.hgetall(FEED_CURSORS)).items()  # type: ignore[misc]
        }
        async with self.redis.pipeline(transaction=False) as pipe:
            for k, shard in enumerate(ALL_SHARDS):
                after = cursors.get(str(k))
                pipe.xrange(shard.outbox, min="-" if after is None else "(" + after, count=PAGE)
            pages = await execute(pipe)
        args: list[bytes | str | int] = [self.limits.max_len]
        last: dict[str, str] = {}
        count = 0
        for k, entries in enumerate(pages):
            if not entries:
                continue
            payloads = [fields[b"e"] for _, fields in entries]
            last[str(k)] = text_of(entries[-1][0])
            args += [k, cursors.get(str(k), ""), last[str(k)], len(payloads), *payloads]
            count += len(payloads)
        if not last:
            return 0
        moved = await self._relay(keys=[EVENTS, FEED_CURSORS], args=args)
        # Taken: the outboxes need not keep them (entries before the cursor go).
        async with self.redis.pipeline(transaction=False) as pipe:
            for taken in map(text_of, moved):
                pipe.xtrim(ALL_SHARDS[int(taken)].outbox, minid=last[taken], approximate=False)
            await execute(pipe)
        return count
