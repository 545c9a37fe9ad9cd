"""A circuit breaker for the AI provider, shared by every worker through Redis.

Closed: requests flow; consecutive transient failures are counted. At AI_BREAKER_THRESHOLD the
breaker opens for AI_BREAKER_COOLDOWN_S: nobody calls the provider. Then it is half-open: one
worker (SET NX) sends a probe; success closes the breaker, failure opens it for another cool-down.
Waiting on an open breaker does not spend a call's attempts, only its deadline. The state itself
lives in db/breaker_state.py.

A closed breaker is trusted for CLOSED_TRUST_S before Redis is asked again, and a success clears
the failure count only when there may be one: with hundreds of calls in flight, asking Redis
before and after every request would cost more than the requests' own bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import time

from core import metrics
from db.breaker_state import BreakerState
from db.redis_client import RedisClient

log = logging.getLogger(__name__)
CLOSED_TRUST_S = 0.25


class BreakerOpen(Exception):
    """The deadline passed while the breaker kept the provider off limits."""


class CircuitBreaker:
    def __init__(self, redis: RedisClient, threshold: int, cooldown_s: float) -> None:
        self.state = BreakerState(redis)
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._closed_until = 0.0  # monotonic time until which "closed" needs no re-check
        self._may_have_failures = True  # unknown at first: the first success clears

    async def wait_until_callable(self, deadline: float) -> None:
        """Return when this worker may call the provider: closed, or half-open and ours to probe."""
        if time.monotonic() < self._closed_until:
            return
        while True:
            snapshot = await self.state.read()
            self._may_have_failures = snapshot.consecutive_failures > 0
            open_until, now = snapshot.open_until, time.time()
            if open_until is None:
                self._closed_until = time.monotonic() + CLOSED_TRUST_S
                return
            if now >= open_until and await self.state.take_probe(self.cooldown_s):
                return
            wait = max(open_until - now, 0.05)
            if time.monotonic() + wait > deadline:
                raise BreakerOpen(f"AI circuit breaker open until {open_until:.0f} (epoch s)")
            await asyncio.sleep(min(wait, 1.0))

    async def record_success(self) -> None:
        if self._may_have_failures:
            await self.state.record_success()
            self._may_have_failures = False

    async def record_failure(self) -> int:
        failures = await self.state.record_failure(self.threshold, self.cooldown_s)
        self._may_have_failures = True
        if failures >= self.threshold:
            self._closed_until = 0.0
            metrics.BREAKER_OPENINGS.inc()
            log.warning(
                "AI circuit breaker open for %.1fs after %d consecutive failures",
                self.cooldown_s,
                failures,
            )
        return failures
