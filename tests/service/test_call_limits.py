"""Per-call caps over HTTP: a request whose new packets would take a call past MAX_CALL_PACKETS or
MAX_CALL_BYTES gets 413 `call_too_large` naming the setting, on both ingestion paths, and nothing
of it is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient, Response
from redis.asyncio import Redis

from db.keys import call_keys
from service.app import create_asgi
from settings import Settings
from tests.factories import packet, send, send_all

MAX_PACKETS = 3
MAX_BYTES = 64


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-route"])
async def client(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[AsyncClient]:
    capped = settings.model_copy(
        update={
            "ingest_fast_path": request.param,
            "max_call_packets": MAX_PACKETS,
            "max_call_bytes": MAX_BYTES,
        }
    )
    app = create_asgi(capped)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as client,
    ):
        yield client


def assert_call_too_large(response: Response, setting: str) -> None:
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == "call_too_large"
    assert setting in body["detail"]


async def stored(client: AsyncClient, redis: Redis, call_id: str) -> tuple[int, int]:
    status = (await client.get(f"/v1/calls/{call_id}")).json()
    return status["packets_received"], int(await redis.xlen(call_keys(call_id).packets))


async def test_a_packet_past_max_call_packets_gets_413(client: AsyncClient, redis: Redis):
    await send_all(client, "call-1", [0, 1, 2])

    response = await send(client, "call-1", 3)

    assert_call_too_large(response, "MAX_CALL_PACKETS")
    assert await stored(client, redis, "call-1") == (3, 3)


async def test_a_batch_crossing_max_call_packets_is_refused_whole(
    client: AsyncClient, redis: Redis
):
    await send(client, "call-1", 0)

    response = await client.post(
        "/v1/call/stream/call-1/batch", json={"packets": [packet(s) for s in (1, 2, 3)]}
    )

    assert_call_too_large(response, "MAX_CALL_PACKETS")
    assert await stored(client, redis, "call-1") == (1, 1)


async def test_data_past_max_call_bytes_gets_413(client: AsyncClient, redis: Redis):
    assert (await send(client, "call-1", 0, data="x" * (MAX_BYTES - 1))).status_code == 202

    response = await send(client, "call-1", 1, data="yz")

    assert_call_too_large(response, "MAX_CALL_BYTES")
    assert await stored(client, redis, "call-1") == (1, 1)


async def test_a_full_call_still_answers_a_repeated_packet_as_a_duplicate(client: AsyncClient):
    await send_all(client, "call-1", [0, 1, 2])

    again = await send(client, "call-1", 2)

    assert again.status_code == 200
    assert again.json()["duplicate"] is True
