"""Per-key request rates, counted in Redis so that every API process shares them: a fixed
one-second window per key (one round trip per counted request)."""

from __future__ import annotations

import time

from db.keys import RATE_PREFIX
from db.redis_client import RedisClient, execute


class RateLimits:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def hit(self, subject: str, per_second: int) -> float | None:
        """Count one request of `subject`; None if within `per_second`, else the seconds to wait
        until the next window."""
        now = time.time()
        window = int(now)
        key = f"{RATE_PREFIX}{subject}:{window}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 2)
            count, _ = await execute(pipe)
        if int(count) <= per_second:
            return None
        return max(window + 1 - now, 0.001)
