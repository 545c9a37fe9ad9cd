"""Completion: exactly once under concurrency, the current state afterwards, 404 when unknown."""

from __future__ import annotations

import asyncio

import pytest
from arq.constants import default_queue_name, job_key_prefix
from httpx import AsyncClient
from redis.asyncio import Redis

from db.keys import PENDING_INDEX
from tests.factories import send


@pytest.fixture
def client(both_paths: AsyncClient) -> AsyncClient:
    return both_paths


async def test_first_complete_answers_202_and_queues_one_job(client: AsyncClient, redis: Redis):
    await send(client, "call-1", 0)

    response = await client.post("/v1/call/complete/call-1")

    assert response.status_code == 202
    assert response.json() == {"call_id": "call-1", "state": "COMPLETED"}
    assert await redis.zrange(default_queue_name, 0, -1) == [b"call:call-1"]
    assert await redis.exists(job_key_prefix + "call:call-1")
    assert await redis.zscore(PENDING_INDEX, "call-1") is not None


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


async def test_100_concurrent_completes_give_one_202_and_one_job(client: AsyncClient, redis: Redis):
    await send(client, "race", 0)

    responses = await asyncio.gather(*(client.post("/v1/call/complete/race") for _ in range(100)))

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 99 + [202]
    assert all(r.json()["state"] == "COMPLETED" for r in responses)
    assert await redis.zcard(default_queue_name) == 1


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
