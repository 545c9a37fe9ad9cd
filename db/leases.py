"""The per-call lease: the worker running a call's job holds it and renews it; a lease that lapses
tells the reaper the worker died. Only the holder may renew or drop it."""

from __future__ import annotations

from collections.abc import Sequence

from db.keys import call_keys
from db.pipelining import run_scripts
from db.redis_client import RedisClient, execute
from db.scripts import Script, register


class Leases:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._renew = register(redis, Script.LEASE_RENEW)
        self._drop = register(redis, Script.LEASE_DROP)

    async def take(self, call_id: str, holder: str, ttl_s: float) -> None:
        """The newest runner of a call's job takes the lease outright; older ones are fenced."""
        await self.redis.set(call_keys(call_id).lease, holder, px=int(ttl_s * 1000))

    async def renew(self, call_id: str, holder: str, ttl_s: float) -> bool:
        renewed = await self._renew(
            keys=[call_keys(call_id).lease], args=[holder, int(ttl_s * 1000)]
        )
        return bool(renewed)

    async def renew_many(self, held: dict[str, str], ttl_s: float) -> dict[str, bool]:
        """Renew every lease in `held` (holder -> call id) in one round trip; holder -> renewed."""
        if not held:
            return {}
        ttl_ms = int(ttl_s * 1000)
        results = await run_scripts(
            self.redis,
            [(self._renew, [call_keys(c).lease], [holder, ttl_ms]) for holder, c in held.items()],
        )
        for result in results:
            if isinstance(result, Exception):
                raise result
        return {holder: bool(r) for holder, r in zip(held, results, strict=True)}

    async def drop(self, call_id: str, holder: str) -> None:
        """Hand the call back at once (graceful stop) instead of waiting for the lease to lapse."""
        await self._drop(keys=[call_keys(call_id).lease], args=[holder])

    async def alive(self, call_id: str) -> bool:
        return bool(await self.redis.exists(call_keys(call_id).lease))

    async def alive_among(self, call_ids: Sequence[str]) -> set[str]:
        """The calls among `call_ids` whose lease is held: one round trip (per node, on a
        cluster) whatever their number."""
        if not call_ids:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.exists(call_keys(call_id).lease)
            held = await execute(pipe)
        return {call_id for call_id, n in zip(call_ids, held, strict=True) if n}


class TranscriptionLock:
    """One transcription pass of a call at a time (jobs/transcription.py): taken with SET NX
    and an expiry (a worker that dies holding it lets it lapse), dropped by its holder only."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._drop = register(redis, Script.LEASE_DROP)

    async def take(self, call_id: str, holder: str, ttl_s: float) -> bool:
        key = call_keys(call_id).transcribing
        return bool(await self.redis.set(key, holder, px=int(ttl_s * 1000), nx=True))

    async def drop(self, call_id: str, holder: str) -> None:
        await self._drop(keys=[call_keys(call_id).transcribing], args=[holder])
