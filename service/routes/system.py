"""The whole system at a glance, for the supervisor's dashboard."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from db import calls
from db.outages import POSTGRES_OUTAGE
from db.states import CallState
from jobs.queue import queue_status
from service.deps import ResourcesDep, SessionDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["calls"])


class BreakerStatus(BaseModel):
    state: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    open_until: datetime | None


class SystemStatus(BaseModel):
    calls_by_state: dict[str, int] = Field(
        description="Every known call by state: live ones from Redis, the rest from PostgreSQL."
    )
    live_calls: int = Field(description="Calls still receiving packets (IN_PROGRESS).")
    awaiting_flush: int = Field(description="Completed calls not yet copied to PostgreSQL.")
    awaiting_worker: int = Field(description="Completed calls not yet ARCHIVED or FAILED.")
    queued_jobs: int = Field(description="Jobs waiting in the arq queue (deferred ones included).")
    oldest_waiting_s: float | None = Field(
        description="How long the longest-waiting completed call has waited for its result."
    )
    ai_breaker: BreakerStatus
    worker_heartbeat: str | None = Field(
        description="The last health line a worker wrote (arq), null if no worker is running."
    )
    postgres_available: bool


@router.get("/v1/system", response_model=SystemStatus, summary="The whole system at a glance")
async def system_status(res: ResourcesDep, session: SessionDep) -> SystemStatus:
    indexes = await res.live.counts()
    queue = await queue_status(res.queue)
    breaker = await res.breaker.read()
    now = time.time()
    try:
        by_state = await calls.count_by_state(session)
        postgres_available = True
    except POSTGRES_OUTAGE as exc:
        log.warning("system status without PostgreSQL: %r", exc)
        by_state, postgres_available = {}, False
    completed_unflushed = max(indexes.unflushed - indexes.live, 0)
    counts = {state.value: by_state.get(state.value, 0) for state in CallState}
    counts[CallState.IN_PROGRESS.value] = indexes.live
    counts[CallState.COMPLETED.value] += completed_unflushed
    open_until, oldest = breaker.open_until, indexes.oldest_pending_at
    return SystemStatus(
        calls_by_state=counts,
        live_calls=indexes.live,
        awaiting_flush=completed_unflushed,
        awaiting_worker=indexes.pending,
        queued_jobs=queue.queued_jobs,
        oldest_waiting_s=round(now - oldest, 3) if oldest else None,
        ai_breaker=BreakerStatus(
            state=_breaker_state(open_until, now),
            consecutive_failures=breaker.consecutive_failures,
            open_until=datetime.fromtimestamp(open_until, tz=UTC) if open_until else None,
        ),
        worker_heartbeat=queue.worker_heartbeat,
        postgres_available=postgres_available,
    )


def _breaker_state(open_until: float | None, now: float) -> Literal["closed", "open", "half_open"]:
    if open_until is None:
        return "closed"
    return "open" if now < open_until else "half_open"
