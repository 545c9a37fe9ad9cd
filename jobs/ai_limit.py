"""AI_MAX_CONCURRENCY: at most that many requests to the AI provider at once, across every
worker, so the number of calls in flight follows the provider's capacity, not a worker constant.

Each worker process runs one broker for its waiting requests: it asks Redis for as many slots as
it has waiters in one round trip, hands them out first come first served, and asks again shortly
while some still wait; so a thousand waiting calls cost a round trip per 20 ms, not a thousand.
Slots given back in the same event-loop tick go back in one round trip. A 429 pauses the limit
for everyone for the provider's Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator

from db.ai_slots import AiSlots
from jobs.heartbeat import WORKER_ID

log = logging.getLogger(__name__)
ASK_AGAIN_S = 0.02  # while requests wait and no slot is free


class NoSlotInTime(Exception):
    """The call's deadline passed while every slot of the provider was taken."""


class AiLimiter:
    def __init__(self, slots: AiSlots) -> None:
        self.slots = slots
        self._waiters: deque[tuple[str, asyncio.Future[None]]] = deque()
        self._names = (f"{WORKER_ID}:ai:{n}" for n in itertools.count())
        self._broker: asyncio.Task[None] | None = None
        self._releasing: list[str] = []
        self._releaser: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """Hold one slot for the block; waits (by the monotonic `deadline`) for a free one."""
        holder = next(self._names)
        granted = asyncio.get_running_loop().create_future()
        self._waiters.append((holder, granted))
        self._start_broker()
        try:
            await asyncio.wait_for(asyncio.shield(granted), max(deadline - time.monotonic(), 0))
        except TimeoutError:
            if not granted.done():
                granted.cancel()
                raise NoSlotInTime(f"no AI slot free before the deadline ({holder})") from None
        try:
            yield
        finally:
            self._release_soon(holder)

    async def settle(self) -> None:
        """Wait until every slot given back is back in Redis."""
        while self._releaser is not None and not self._releaser.done():
            await asyncio.shield(self._releaser)

    def _release_soon(self, holder: str) -> None:
        self._releasing.append(holder)
        if self._releaser is None or self._releaser.done():
            self._releaser = asyncio.create_task(self._release(), name="ai-slot-release")

    async def _release(self) -> None:
        await asyncio.sleep(0)  # the slots given back in this tick go together
        while self._releasing:
            holders, self._releasing = self._releasing, []
            try:
                await self.slots.release(*holders)
            except Exception as exc:  # they come back anyway when their ttl runs out
                log.warning("could not give back %d AI slots: %r", len(holders), exc)

    async def pause(self, seconds: float) -> None:
        """The provider asked to slow down (429): nobody calls it for `seconds`."""
        log.warning("AI provider asked to wait %.1fs; pausing every worker", seconds)
        await self.slots.pause(seconds)

    def _start_broker(self) -> None:
        if self._broker is None or self._broker.done():
            self._broker = asyncio.create_task(self._hand_out(), name="ai-slot-broker")

    async def _hand_out(self) -> None:
        while True:
            while self._waiters and self._waiters[0][1].done():  # gave up waiting
                self._waiters.popleft()
            if not self._waiters:
                return
            wanted = [holder for holder, _ in self._waiters]
            try:
                granted, wait_s = await self.slots.acquire(wanted)
            except Exception as exc:  # Redis blips: the waiters keep waiting, by their deadline
                log.warning("could not ask for AI slots: %r", exc)
                granted, wait_s = 0, 0.5
            for _ in range(granted):
                holder, future = self._waiters.popleft()
                if future.done():  # gave up between the ask and the answer: give it back
                    await self.slots.release(holder)
                else:
                    future.set_result(None)
            if granted < len(wanted):  # the limit is reached (or paused): ask again shortly
                await asyncio.sleep(max(wait_s, ASK_AGAIN_S))
