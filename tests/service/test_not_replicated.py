"""REDIS_WAIT_REPLICAS over HTTP: with the replica gone, a packet and a completion get 503
`not_replicated` with Retry-After, on both ingestion paths; once it is back, the retried packet is
answered as the duplicate it is (stored once) and the completion as done."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from pydantic import ValidationError

from core.builders import replication
from db.pipelining import Replication
from devstack.servers import EmbeddedRedis
from service.app import create_asgi
from settings import Settings
from tests.factories import send
from tests.replicas import master_and_replica, wait_for_online_replica


@pytest.fixture(scope="module")
def replicated(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    with master_and_replica(Path(tmp_path_factory.mktemp("replicated"))) as pair:
        yield pair


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-route"])
async def client(
    request: pytest.FixtureRequest,
    settings: Settings,
    replicated: tuple[EmbeddedRedis, EmbeddedRedis],
) -> AsyncIterator[AsyncClient]:
    master, _ = replicated
    waiting = settings.model_copy(
        update={
            "ingest_fast_path": request.param,
            "redis_url": master.url,
            "queue_redis_url": settings.queue_url,
            "redis_wait_replicas": 1,
            "redis_wait_timeout_ms": 100,
        }
    )
    app = create_asgi(waiting)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as client,
    ):
        yield client


async def test_without_the_replica_packets_and_completions_get_503_and_a_retry_is_safe(
    client: AsyncClient,
    replicated: tuple[EmbeddedRedis, EmbeddedRedis],
    request: pytest.FixtureRequest,
) -> None:
    master, replica = replicated
    call_id = f"wait-{request.node.callspec.id}"
    assert (await send(client, call_id, 0)).status_code == 202
    with replica_down(master, replica):
        refused = await send(client, call_id, 1)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "not_replicated"
    assert "retrying is safe" in refused.json()["detail"]
    retried = await send(client, call_id, 1)
    assert (retried.status_code, retried.json()["duplicate"]) == (200, True)

    with replica_down(master, replica):
        ending = await client.post(f"/v1/call/complete/{call_id}")
    assert (ending.status_code, ending.json()["code"]) == (503, "not_replicated")
    assert (await client.post(f"/v1/call/complete/{call_id}")).status_code == 200


@contextmanager
def replica_down(master: EmbeddedRedis, replica: EmbeddedRedis) -> Iterator[None]:
    replica.kill()
    try:
        yield
    finally:
        replica.start()
        wait_for_online_replica(master.port)


def test_a_wait_longer_than_the_read_timeout_is_refused_at_startup() -> None:
    with pytest.raises(ValidationError, match="REDIS_WAIT_TIMEOUT_MS"):
        Settings(_env_file=None, redis_wait_replicas=1, redis_wait_timeout_ms=1000)
    assert replication(Settings(_env_file=None)) is None
    assert replication(Settings(_env_file=None, redis_wait_replicas=2)) == Replication(2, 100)
