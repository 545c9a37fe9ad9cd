"""The API's composition root: `uvicorn service.app:app` (or `--factory ...:create_asgi`)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI
from starlette.types import ASGIApp

from core.access import key_ring, refuse_open_non_loopback
from core.heap import settle_heap
from core.logs import configure_logging
from service.errors import install_error_handlers
from service.fastpath import IngestFastPath
from service.feeds import asterisk_ws, audiohook_ws, freeswitch_ws
from service.feeds.audiosocket import AudioSocketListener, start_listeners
from service.gate import AccessGate
from service.resources import ApiResources, open_resources
from service.routes import (
    calls,
    dashboard,
    erasures,
    events,
    health,
    ingest,
    media_ws,
    metrics,
    recording,
    system,
    transcript,
    webhooks,
)
from service.schemas import GATE_RESPONSES
from service.status_path import StatusFastPath
from settings import Settings, get_settings

DESCRIPTION = """
Turns live PBX calls into stored, AI-analysed records.

Packets go to Redis in one round trip and are answered at once; a call completes exactly once
(explicitly or after CALL_IDLE_TIMEOUT_S of silence); an arq worker flushes it to PostgreSQL and
runs transcription then sentiment with bounded retries. States:
IN_PROGRESS → COMPLETED → PROCESSING_AI → ARCHIVED, or FAILED (replayable).
"""


class State(TypedDict):
    resources: ApiResources


def _bind_host() -> str | None:
    """The address uvicorn was asked to listen on (`--host` or UVICORN_HOST), if it was run as
    a command: an ASGI app is not told its address, and refusing at start beats refusing every
    request (service/gate.py does that too, for servers this cannot see)."""
    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg == "--host" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
    return os.environ.get("UVICORN_HOST")


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        configured = settings or get_settings()
        configure_logging(configured.log_level, configured.log_format)
        refuse_open_non_loopback(key_ring(configured), _bind_host())
        res = open_resources(configured)
        res.feed.start()
        listeners: list[AudioSocketListener] = []
        try:
            # Asterisk AudioSocket's TCP listeners, when configured, in this process.
            listeners = await start_listeners(configured, res.ingestion)
            if configured.settle_heap:
                settle_heap()
            yield {"resources": res}
        finally:
            for listener in listeners:
                await listener.close()
            await res.close()

    app = FastAPI(
        title="Callstream",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses=GATE_RESPONSES,
    )
    install_error_handlers(app)
    app.include_router(ingest.router)
    app.include_router(calls.router)
    app.include_router(erasures.router)
    app.include_router(recording.router)
    app.include_router(transcript.router)
    app.include_router(health.router)
    app.include_router(media_ws.router)
    app.include_router(asterisk_ws.router)
    app.include_router(freeswitch_ws.router)
    app.include_router(audiohook_ws.router)
    app.include_router(system.router)
    app.include_router(metrics.router)
    app.include_router(events.router)
    app.include_router(dashboard.router)
    app.include_router(webhooks.router)
    return app


def create_asgi(settings: Settings | None = None) -> AccessGate:
    """What uvicorn serves: the access gate, then the ingestion fast path (INGEST_FAST_PATH) and
    the status read's (service/status_path.py), then the FastAPI app. The fast paths sit outside
    FastAPI's middleware stack on purpose: that stack alone costs about a third of a packet's
    time (BENCHMARKS.md); the gate sits outside everything, so that no path can skip it."""
    api = create_app(settings)
    inner: ASGIApp = StatusFastPath(api)
    if (settings or get_settings()).ingest_fast_path:
        inner = IngestFastPath(inner)
    return AccessGate(inner)


app = create_asgi()
