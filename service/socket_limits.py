"""How many sockets and event streams an API key holds open, and how fast it opens new ones:
without a bound, one key (or a leaked one) could hold every connection a process serves
(uvicorn's --limit-concurrency), after which every packet of every call gets a 503.

Open connections are counted in this process (a crashed process takes its count with it, so
nothing leaks): with N API processes a key may hold N x WS_MAX_SOCKETS_PER_KEY. New ones are
counted in Redis per second, like the request rates, so the rate holds across processes."""

from __future__ import annotations

import math
from collections import Counter

from core.access import Principal
from core.errors import RateLimited
from db.rate_limits import RateLimits

# How long a client over the open-connection cap is told to wait: a call or a dashboard
# lasts far longer than this, but a retry loop slower than once a second does no harm.
CAP_RETRY_AFTER_S = 5


class SocketSlot:
    """One open connection of a key: released exactly once, when the connection ends."""

    def __init__(self, counts: Counter[str], key_id: str) -> None:
        self._counts = counts
        self._key_id: str | None = key_id

    def release(self) -> None:
        if self._key_id is None:
            return
        self._counts[self._key_id] -= 1
        if self._counts[self._key_id] <= 0:
            del self._counts[self._key_id]
        self._key_id = None


class SocketLimits:
    def __init__(self, rates: RateLimits, max_open: int, per_second: int) -> None:
        self.rates = rates
        self.max_open = max_open  # WS_MAX_SOCKETS_PER_KEY
        self.per_second = per_second  # WS_CONNECT_RATE_LIMIT; 0: no limit
        self._open: Counter[str] = Counter()

    async def admit(self, principal: Principal) -> SocketSlot:
        """A slot for one more connection of `principal`'s key, or 429 (RateLimited) saying
        which limit it passed. The caller releases the slot when the connection ends."""
        key_id = principal.key_id
        if self._open[key_id] >= self.max_open:
            raise RateLimited(
                f"this key holds {self.max_open} sockets and event streams open on this API "
                "process (WS_MAX_SOCKETS_PER_KEY); close one, or retry after Retry-After",
                {"Retry-After": str(CAP_RETRY_AFTER_S)},
            )
        # Counted before the round trip below, so that concurrent handshakes cannot pass the cap.
        self._open[key_id] += 1
        slot = SocketSlot(self._open, key_id)
        if self.per_second > 0:
            try:
                wait_s = await self.rates.hit(f"{key_id}:sockets", self.per_second)
            except BaseException:
                slot.release()
                raise
            if wait_s is not None:
                slot.release()
                raise RateLimited(
                    f"this key may open {self.per_second} sockets and event streams a second "
                    "(WS_CONNECT_RATE_LIMIT); retry after Retry-After",
                    {"Retry-After": str(max(1, math.ceil(wait_s)))},
                )
        return slot
