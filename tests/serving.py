"""Real servers in the test's own event loop: uvicorn for an app on a free loopback port (for the
tests that need a real socket: WebSockets, the access gate's handshake refusals, browsers), and
arq workers over the suite's stores."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from arq.connections import ArqRedis
from arq.worker import Worker
from starlette.types import ASGIApp

from devstack.commands import WS_PROTOCOL
from jobs.ai import AIClient
from jobs.resources import WorkerResources, make_resources
from jobs.worker import make_functions
from settings import Settings


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` (its lifespan included) while the block runs; yields "127.0.0.1:port". The
    listening socket is bound here and handed to uvicorn: no other process can take its port
    between a look for a free one and uvicorn's bind. Its WebSockets are served as in production
    (devstack/commands.py's WS_PROTOCOL, 32 messages queued at most)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_level="warning",
        ws=WS_PROTOCOL,
        ws_max_queue=32,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            # uvicorn ends a failed start with sys.exit(): say why as a test failure, never a
            # SystemExit let loose in the test session (it would break every test after it).
            why = task.exception() if task.done() and not task.cancelled() else None
            raise AssertionError(f"uvicorn did not start ({why!r})")
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            if not task.done():
                await asyncio.wait_for(task, 10)
            elif not task.cancelled() and (stopped := task.exception()) is not None:
                raise AssertionError(f"uvicorn stopped by itself ({stopped!r})")
        finally:
            sock.close()


def arq_worker(res: WorkerResources, **overrides: Any) -> Worker:
    """A real arq worker running the app's functions with `res` (as arq's own tests build one)."""
    settings = res.settings
    options: dict[str, Any] = {
        "functions": make_functions(settings.job_timeout_s),
        "redis_pool": ArqRedis.from_url(settings.queue_url),
        "poll_delay": 0.05,
        "handle_signals": False,
        "keep_result": 0,
        "max_jobs": settings.worker_max_jobs,
        "ctx": {"resources": res},
    }
    return Worker(**{**options, **overrides})


@asynccontextmanager
async def worker_running(
    settings: Settings, ai: AIClient | None = None, **overrides: Any
) -> AsyncIterator[WorkerResources]:
    """A worker polling the queue while the block runs (not burst: calls arrive meanwhile)."""
    res = make_resources(settings, ai=ai)
    worker = arq_worker(res, burst=False, **overrides)
    task = asyncio.create_task(worker.main())
    try:
        yield res
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # arq's close() cancels the jobs still running, then gathers them: a cancelled job
        # raises out of that gather (one CI run's failure at a test's end). Cancelled and
        # awaited here first, as close() would, they are gone before it gathers.
        jobs = list(worker.tasks.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        worker.tasks.clear()
        await worker.close()
        await res.close()
