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
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://test") as client,
    ):
        yield client
