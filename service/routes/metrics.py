"""`GET /metrics`: Prometheus' text format, for the supervisor's scraper (core/metrics.py)."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Response

from core import metrics
from db.outages import REDIS_OUTAGE
from jobs.queue import queue_status
from service.deps import ResourcesDep
from service.resources import ApiResources

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])
TEXT = {"text/plain": {"schema": {"type": "string"}}}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format (version 0.0.4).", "content": TEXT}},
    summary="Counters and histograms of every process, and live figures from Redis",
)
async def prometheus_metrics(res: ResourcesDep) -> Response:
    body = metrics.render(await _live_figures(res))
    return Response(body, media_type=metrics.CONTENT_TYPE)


async def _live_figures(res: ApiResources) -> metrics.LiveFigures | None:
    """Two cheap Redis round trips (counts of sorted sets). Without Redis the counters are still
    served: an outage is when they matter most."""
    try:
        indexes = await res.live.counts()
        queue = await queue_status(res.queue)
    except REDIS_OUTAGE as exc:
        log.warning("metrics without the live figures, Redis is unavailable: %r", exc)
        return None
    oldest = indexes.oldest_pending_at
    return metrics.LiveFigures(
        live_calls=indexes.live,
        awaiting_flush=max(indexes.unflushed - indexes.live, 0),
        awaiting_result=indexes.pending,
        queued_jobs=queue.queued_jobs,
        oldest_wait_s=time.time() - oldest if oldest else None,
    )
