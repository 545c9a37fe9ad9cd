"""The AI circuit breaker's shared state in Redis: consecutive failures, when it reopens, and the
half-open probe lock. jobs/breaker.py decides with it; the system status reads it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from db.keys import AI_BREAKER, AI_BREAKER_PROBE
from db.redis_client import RedisClient
from db.scripts import Script, register


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    consecutive_failures: int
    open_until: float | None  # epoch seconds; None while closed


class BreakerState:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._record_failure = register(redis, Script.BREAKER_FAILURE)

    async def read(self) -> BreakerSnapshot:
        raw = await self.redis.hgetall(AI_BREAKER)  # type: ignore[misc]
        open_until = raw.get(b"open_until")
        return BreakerSnapshot(
            consecutive_failures=int(raw.get(b"failures", 0)),
            open_until=float(open_until) if open_until else None,
        )

    async def open_until(self) -> float | None:
        value = await self.redis.hget(AI_BREAKER, "open_until")  # type: ignore[misc]
        return float(value) if value is not None else None

    async def take_probe(self, hold_s: float) -> bool:
        """Half-open: the one caller that gets True sends the probe request."""
        hold_ms = max(1, int(hold_s * 1000))
        return bool(await self.redis.set(AI_BREAKER_PROBE, "1", nx=True, px=hold_ms))

    async def record_success(self) -> None:
        await self.redis.delete(AI_BREAKER, AI_BREAKER_PROBE)

    async def record_failure(self, threshold: int, cooldown_s: float) -> int:
        """One more consecutive failure; opens the breaker at the threshold. Returns the count."""
        failures = await self._record_failure(
            keys=[AI_BREAKER, AI_BREAKER_PROBE], args=[time.time(), threshold, cooldown_s]
        )
        return int(failures)
