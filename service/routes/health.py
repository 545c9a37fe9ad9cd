"""Liveness (the process answers) and readiness (Redis and PostgreSQL answer)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.deps import ResourcesDep
from service.schemas import Health

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


async def _check(
    name: str, probe: asyncio.Future[object] | asyncio.Task[object], timeout_s: float
) -> str:
    """ "ok" or "unavailable": the reason goes to the log, never to the answer (it may name
    hosts, ports or users)."""
    try:
        await asyncio.wait_for(probe, timeout_s)
    except Exception as exc:
        log.warning("readiness: %s is unavailable: %r", name, exc)
        return "unavailable"
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
        _check("redis", asyncio.ensure_future(res.redis.ping()), 3.0),  # socket timeout first
        _check("postgres", asyncio.ensure_future(ping_postgres()), 2.0),
    )
    checks = {"redis": redis_ok, "postgres": pg_ok}
    healthy = all(v == "ok" for v in checks.values())
    # Said, not failed: a full backlog refuses new calls only, and an instance taken out of its
    # load balancer would refuse the packets of live calls too.
    if redis_ok == "ok" and await res.ingestion.backlog.over():
        checks["backlog"] = f"full: {res.ingestion.backlog.waiting} waiting, new calls refused"
    else:
        checks["backlog"] = "ok"
    body = Health(status="ok" if healthy else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
