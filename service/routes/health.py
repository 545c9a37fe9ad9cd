"""Liveness (the process answers) and readiness (Redis and PostgreSQL answer)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.deps import ResourcesDep
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


async def _check(probe: asyncio.Future[object] | asyncio.Task[object], timeout_s: float) -> str:
    try:
        await asyncio.wait_for(probe, timeout_s)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"[:200]
    return "ok"


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is unreachable."}},
    summary="Redis and PostgreSQL are reachable",
)
async def readyz(res: ResourcesDep) -> JSONResponse:
    async def ping_postgres() -> object:
        async with res.engine.connect() as conn:
            return await conn.execute(text("SELECT 1"))

    redis_ok, pg_ok = await asyncio.gather(
        _check(asyncio.ensure_future(res.redis.ping()), 3.0),  # the socket timeout comes first
        _check(asyncio.ensure_future(ping_postgres()), 2.0),
    )
    checks = {"redis": redis_ok, "postgres": pg_ok}
    healthy = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if healthy else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
