"""Liveness, readiness, and clear 503s when Redis is unreachable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from devstack.servers import free_port
from service.app import create_asgi
from settings import Settings
from tests.factories import packet
from tests.loading_redis import is_loading, redis_still_loading, wait_until_loaded


@asynccontextmanager
async def client_on(settings: Settings, redis_url: str) -> AsyncIterator[AsyncClient]:
    """The API, started, with its Redis at `redis_url`."""
    app = create_asgi(settings.model_copy(update={"redis_url": redis_url}))
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as client,
    ):
        yield client


@pytest.fixture
async def client_without_redis(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with client_on(settings, f"redis://127.0.0.1:{free_port()}/0") as client:
        yield client


async def test_healthz_answers_while_the_process_lives(client: AsyncClient):
    assert (await client.get("/healthz")).json() == {"status": "ok", "checks": {}}


async def test_readyz_is_ok_when_redis_and_postgres_answer(client: AsyncClient):
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"] == {"redis": "ok", "postgres": "ok", "backlog": "ok"}


async def test_ingest_answers_503_with_retry_after_quickly_when_redis_is_down(
    client_without_redis: AsyncClient,
):
    started = time.monotonic()
    response = await client_without_redis.post("/v1/call/stream/call-1", json=packet(0))

    assert time.monotonic() - started < 1.5
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["code"] == "redis_unavailable"


async def test_readyz_is_503_and_names_redis_when_redis_is_down(client_without_redis: AsyncClient):
    response = await client_without_redis.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["redis"].startswith("unavailable")
    assert response.json()["checks"]["postgres"] == "ok"


@pytest.mark.timeout(60)
async def test_a_redis_still_loading_its_data_gets_503s_then_the_api_carries_on(
    settings: Settings, tmp_path: Path
):
    with redis_still_loading(tmp_path / "redis") as server:
        async with client_on(settings, server.url) as client:
            assert is_loading(server)
            refused = await client.post("/v1/call/stream/call-1", json=packet(0))
            ready = await client.get("/readyz")
            assert is_loading(server)  # both answered while it was loading

            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["code"] == "redis_unavailable"
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis"].startswith("unavailable")

            await asyncio.to_thread(wait_until_loaded, server)
            taken = await client.post("/v1/call/stream/call-1", json=packet(0))
            assert taken.status_code == 202
            assert (await client.get("/readyz")).status_code == 200


async def test_openapi_documents_every_endpoint(client: AsyncClient):
    paths = (await client.get("/openapi.json")).json()["paths"]

    expected = {
        "/v1/call/stream/{call_id}",
        "/v1/call/stream/{call_id}/batch",
        "/v1/call/complete/{call_id}",
        "/v1/calls",
        "/v1/calls/{call_id}",
        "/v1/calls/{call_id}/retry",
        "/healthz",
        "/readyz",
        "/v1/system",
        "/v1/calls/{call_id}/history",
    }
    assert expected <= set(paths)
    ingest = paths["/v1/call/stream/{call_id}"]["post"]["responses"]
    assert {"202", "200", "409", "413", "422", "503"} <= set(ingest)
