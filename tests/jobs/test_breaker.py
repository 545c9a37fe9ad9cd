"""The shared AI circuit breaker, on a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from httpx import AsyncClient
from redis.asyncio import Redis

from db.breaker_state import BreakerSnapshot, BreakerState
from jobs.ai import TransientAIError
from jobs.breaker import BreakerOpen, CircuitBreaker
from tests.factories import send
from tests.fakes import ScriptedAI


async def test_breaker_opens_after_threshold_consecutive_failures(redis: Redis):
    breaker = CircuitBreaker(redis, threshold=3, cooldown_s=5)
    for _ in range(3):
        await breaker.record_failure()

    with pytest.raises(BreakerOpen):
        await breaker.wait_until_callable(deadline=time.monotonic() + 0.2)


async def test_a_success_resets_the_count_of_consecutive_failures(redis: Redis):
    breaker = CircuitBreaker(redis, threshold=3, cooldown_s=5)
    await breaker.record_failure()
    await breaker.record_failure()
    await breaker.record_success()

    assert await breaker.record_failure() == 1  # counted afresh: 3 failures, none consecutive
    assert await BreakerState(redis).read() == BreakerSnapshot(1, open_until=None)  # closed
    await breaker.wait_until_callable(deadline=time.monotonic() + 0.1)


async def test_after_the_cooldown_exactly_one_worker_probes(redis: Redis):
    breakers = [CircuitBreaker(redis, threshold=1, cooldown_s=0.2) for _ in range(5)]
    await breakers[0].record_failure()
    await asyncio.sleep(0.25)

    async def try_probe(b: CircuitBreaker) -> bool:
        try:
            await b.wait_until_callable(deadline=time.monotonic() + 0.1)
        except BreakerOpen:
            return False
        return True

    results = await asyncio.gather(*(try_probe(b) for b in breakers))

    assert sorted(results) == [False] * 4 + [True]


async def test_an_open_breaker_delays_calls_without_spending_their_attempts(
    client: AsyncClient, run_worker, ai: ScriptedAI, worker_resources, settings
):
    res = dataclasses.replace(
        worker_resources,
        settings=settings.model_copy(update={"ai_max_attempts": 3}),
        breaker=CircuitBreaker(worker_resources.redis, threshold=2, cooldown_s=0.4),
    )
    ai.fail("transcription", TransientAIError("503"), TransientAIError("503"))
    await send(client, "patient", 0)
    await client.post("/v1/call/complete/patient")

    started = time.monotonic()
    await run_worker(res)

    call = (await client.get("/v1/calls/patient")).json()
    assert call["state"] == "ARCHIVED"
    assert call["ai_attempts"] == 4  # 2 failures, the probe, then sentiment
    assert time.monotonic() - started >= 0.4
