"""Every ingestion and completion test runs against both the bare-ASGI fast path and the
FastAPI routes: they must answer the same."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from service.app import create_asgi
from settings import Settings


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-route"])
async def both_paths(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[AsyncClient]:
    app = create_asgi(settings.model_copy(update={"ingest_fast_path": request.param}))
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as client,
    ):
        yield client


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the Redis Cluster, through the fast path only: the two paths differ above Redis, and
    the single-Redis run holds them to the same answers."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        on_cluster_twice = params.get("topology") == "cluster" and params.get("both_paths") is False
        (dropped if on_cluster_twice else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
