"""A circuit breaker for the AI provider, shared by every worker through Redis.

Closed: requests flow; consecutive transient failures are counted. At AI_BREAKER_THRESHOLD the
breaker opens for AI_BREAKER_COOLDOWN_S: nobody calls the provider. Then it is half-open: one
worker (SET NX) sends a probe; success closes the breaker, failure opens it for another cool-down.
Waiting on an open breaker does not spend a call's attempts, only its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

from db.keys import AI_BREAKER, AI_BREAKER_PROBE

log = logging.getLogger(__name__)


# KEYS: breaker hash, probe lock. ARGV: now, threshold, cool-down. Returns the failure count.
_RECORD_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'open_until', tonumber(ARGV[1]) + tonumber(ARGV[3]))
  redis.call('DEL', KEYS[2])
end
return failures
"""


class BreakerOpen(Exception):
    """The deadline passed while the breaker kept the provider off limits."""


class CircuitBreaker:
    def __init__(self, redis: Redis, threshold: int, cooldown_s: float) -> None:
        self.redis = redis
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._record_failure = redis.register_script(_RECORD_FAILURE)

    async def open_until(self) -> float | None:
        value = await self.redis.hget(AI_BREAKER, "open_until")  # type: ignore[misc]
        return float(value) if value is not None else None

    async def wait_until_callable(self, deadline: float) -> None:
        """Return when this worker may call the provider: closed, or half-open and ours to probe."""
        while True:
            open_until = await self.open_until()
            now = time.time()
            if open_until is None:
                return
            if now >= open_until:
                probe_ms = max(1, int(self.cooldown_s * 1000))
                if await self.redis.set(AI_BREAKER_PROBE, "1", nx=True, px=probe_ms):
                    return
            wait = max(open_until - now, 0.05)
            if time.monotonic() + wait > deadline:
                raise BreakerOpen(f"AI circuit breaker open until {open_until:.0f} (epoch s)")
            await asyncio.sleep(min(wait, 1.0))

    async def record_success(self) -> None:
        await self.redis.delete(AI_BREAKER, AI_BREAKER_PROBE)

    async def record_failure(self) -> int:
        failures = int(
            await self._record_failure(
                keys=[AI_BREAKER, AI_BREAKER_PROBE],
                args=[time.time(), self.threshold, self.cooldown_s],
            )
        )
        if failures >= self.threshold:
            log.warning(
                "AI circuit breaker open for %.1fs after %d consecutive failures",
                self.cooldown_s,
                failures,
            )
        return failures
