"""The system status: counts across Redis and PostgreSQL, the queue and the AI breaker."""

from __future__ import annotations

from httpx import AsyncClient

from jobs.breaker import CircuitBreaker
from jobs.resources import WorkerResources
from tests.factories import send


async def test_system_status_counts_calls_in_every_state(client: AsyncClient, run_worker):
    for call_id in ("a", "b"):
        await send(client, call_id, 0)
        await client.post(f"/v1/call/complete/{call_id}")
    await run_worker()
    await send(client, "talking", 0)
    await send(client, "waiting", 0)
    await client.post("/v1/call/complete/waiting")

    status = (await client.get("/v1/system")).json()

    assert status["calls_by_state"] == {
        "IN_PROGRESS": 1,
        "COMPLETED": 1,
        "PROCESSING_AI": 0,
        "ARCHIVED": 2,
        "FAILED": 0,
    }
    assert (status["live_calls"], status["awaiting_flush"], status["awaiting_worker"]) == (1, 1, 1)
    assert status["queued_jobs"] == 1
    assert status["oldest_waiting_s"] >= 0
    assert status["ai_breaker"]["state"] == "closed"
    assert status["postgres_available"] is True


async def test_system_status_shows_an_open_ai_breaker(
    client: AsyncClient, worker_resources: WorkerResources
):
    breaker = CircuitBreaker(worker_resources.redis, threshold=2, cooldown_s=30)
    await breaker.record_failure()
    await breaker.record_failure()

    status = (await client.get("/v1/system")).json()

    assert status["ai_breaker"]["state"] == "open"
    assert status["ai_breaker"]["consecutive_failures"] == 2
    assert status["ai_breaker"]["open_until"] is not None
