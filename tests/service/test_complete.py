"""Completion: exactly once under concurrency, the current state afterwards, 404 when unknown."""

from __future__ import annotations

import asyncio

import pytest
from arq.constants import default_queue_name, job_key_prefix
from httpx import AsyncClient
from redis.asyncio import Redis

from db.keys import call_keys
from tests.factories import send

# Ingestion, completion, the worker and recovery hold on a Redis Cluster as on one Redis.
pytestmark = pytest.mark.both_topologies


@pytest.fixture
def client(both_paths: AsyncClient) -> AsyncClient:
    return both_paths


async def test_first_complete_answers_202_and_queues_one_job(
    client: AsyncClient, redis: Redis, queue: Redis
):
    await send(client, "call-1", 0)

    response = await client.post("/v1/call/complete/call-1")

    assert response.status_code == 202
    assert response.json() == {"call_id": "call-1", "state": "COMPLETED"}
    assert await queue.zrange(default_queue_name, 0, -1) == [b"call:call-1"]
    assert await queue.exists(job_key_prefix + "call:call-1")
    assert await redis.zscore(call_keys("call-1").shard.pending, "call-1") is not None


async def test_later_completes_answer_200_with_the_current_state(client: AsyncClient):
    await send(client, "call-1", 0)
    await client.post("/v1/call/complete/call-1")

    again = await client.post("/v1/call/complete/call-1")

    assert again.status_code == 200
    assert again.json() == {"call_id": "call-1", "state": "COMPLETED"}


async def test_complete_of_a_call_that_never_sent_a_packet_is_404(client: AsyncClient, redis):
    response = await client.post("/v1/call/complete/ghost")

    assert response.status_code == 404
    assert "never sent a packet" in response.json()["detail"]
    assert await redis.dbsize() == 0


async def test_100_concurrent_completes_give_one_202_and_one_job(client: AsyncClient, queue: Redis):
    await send(client, "race", 0)

    responses = await asyncio.gather(*(client.post("/v1/call/complete/race") for _ in range(100)))

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 99 + [202]
    assert all(r.json()["state"] == "COMPLETED" for r in responses)
    assert await queue.zcard(default_queue_name) == 1


async def test_complete_of_an_archived_call_reports_archived(client: AsyncClient, run_worker):
    await send(client, "call-1", 0)
    await client.post("/v1/call/complete/call-1")
    await run_worker()

    again = await client.post("/v1/call/complete/call-1")

    assert again.status_code == 200
    assert again.json()["state"] == "ARCHIVED"


async def test_complete_with_a_bad_call_id_is_422(client: AsyncClient):
    response = await client.post("/v1/call/complete/not%20valid")

    assert response.status_code == 422


async def test_past_the_backlog_limit_new_calls_get_503_and_live_calls_go_on(
    settings, redis: Redis
):
    from asgi_lifespan import LifespanManager
    from httpx import ASGITransport

    from service.app import create_asgi

    app = create_asgi(settings.model_copy(update={"backlog_limit": 2}))
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as client,
    ):
        for call_id in ("a", "b", "c", "live"):
            await send(client, call_id, 0)
        for call_id in ("a", "b", "c"):
            await client.post(f"/v1/call/complete/{call_id}")
        await asyncio.sleep(1.1)  # the backlog is read at most once a second

        new = await send(client, "new-call", 0)
        live = await send(client, "live", 1)
        ready = (await client.get("/readyz")).json()

    assert new.status_code == 503
    assert new.json()["code"] == "backlog_full"
    assert int(new.headers["retry-after"]) >= 1
    assert live.status_code == 202
    assert ready["checks"]["backlog"].startswith("full")
    assert not await redis.exists(call_keys("new-call").meta)
