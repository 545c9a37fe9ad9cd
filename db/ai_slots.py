"""The AI provider's concurrency limit, shared by every worker through Redis: slots with an
expiry (a dead worker's slots come back), and a pause that a 429 sets for everyone."""

from __future__ import annotations

import time
from collections.abc import Sequence

from db.keys import AI_SLOTS, AI_SLOTS_PAUSE
from db.redis_client import RedisClient
from db.scripts import Script, register


class AiSlots:
    def __init__(self, redis: RedisClient, limit: int, slot_ttl_s: float) -> None:
        self.redis = redis
        self.limit = limit
        self.slot_ttl_ms = max(1, int(slot_ttl_s * 1000))
        self._acquire = register(redis, Script.AI_SLOTS_ACQUIRE)
        self._pause = register(redis, Script.AI_SLOTS_PAUSE)

    async def acquire(self, holders: Sequence[str]) -> tuple[int, float]:
        """Grant slots to the first holders, as many as are free. Returns (granted, seconds to
        wait before asking again if paused, else 0)."""
        granted, wait_ms = await self._acquire(
            keys=[AI_SLOTS, AI_SLOTS_PAUSE],
            args=[_now_ms(), self.limit, self.slot_ttl_ms, *holders],
        )
        return int(granted), int(wait_ms) / 1000

    async def release(self, *holders: str) -> None:
        await self.redis.zrem(AI_SLOTS, *holders)

    async def pause(self, seconds: float) -> None:
        await self._pause(keys=[AI_SLOTS_PAUSE], args=[_now_ms(), max(1, int(seconds * 1000))])

    async def in_use(self) -> int:
        return int(await self.redis.zcount(AI_SLOTS, _now_ms(), "+inf"))


def _now_ms() -> int:
    return int(time.time() * 1000)
