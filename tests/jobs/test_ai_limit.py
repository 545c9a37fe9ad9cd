"""AI_MAX_CONCURRENCY against a real Redis: shared by every worker, paused for all by a 429,
and a dead holder's slot comes back."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from db.ai_slots import AiSlots
from jobs.ai_limit import AiLimiter, NoSlotInTime


async def test_two_workers_never_exceed_the_shared_limit_and_every_request_runs(redis: Redis):
    workers = [AiLimiter(AiSlots(redis, limit=3, slot_ttl_s=30)) for _ in range(2)]
    running, peak, done = 0, 0, 0

    async def request(limiter: AiLimiter) -> None:
        nonlocal running, peak, done
        async with limiter.slot(time.monotonic() + 10):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            done += 1

    await asyncio.gather(*(request(workers[i % 2]) for i in range(40)))

    for limiter in workers:
        await limiter.settle()
    assert peak == 3
    assert done == 40
    assert await AiSlots(redis, 3, 30).in_use() == 0


async def test_a_429_pauses_every_worker_for_the_retry_after(redis: Redis):
    first, second = (AiLimiter(AiSlots(redis, limit=10, slot_ttl_s=30)) for _ in range(2))
    await first.pause(0.3)

    started = time.monotonic()
    async with second.slot(time.monotonic() + 5):
        waited = time.monotonic() - started

    assert waited >= 0.25


async def test_waiting_past_the_deadline_gives_up_and_holds_nothing(redis: Redis):
    slots = AiSlots(redis, limit=1, slot_ttl_s=30)
    limiter = AiLimiter(slots)
    async with limiter.slot(time.monotonic() + 1):
        with pytest.raises(NoSlotInTime):
            async with limiter.slot(time.monotonic() + 0.1):
                pass
    await limiter.settle()
    assert await slots.in_use() == 0


async def test_a_dead_holders_slot_comes_back_after_its_ttl(redis: Redis):
    dead = AiSlots(redis, limit=1, slot_ttl_s=0.2)
    assert await dead.acquire(["worker-that-dies"]) == (1, 0)

    started = time.monotonic()
    async with AiLimiter(AiSlots(redis, limit=1, slot_ttl_s=0.2)).slot(time.monotonic() + 5):
        waited = time.monotonic() - started

    assert 0.1 <= waited < 2
