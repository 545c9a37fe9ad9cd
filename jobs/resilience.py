"""Keep an arq worker alive through a Redis outage.

arq 0.28 lets a Redis connection error escape its poll loop, so `arq jobs.worker.WorkerSettings`
exits with code 1 whenever Redis restarts (python-arq/arq#435, #498; the maintainers leave the
restart to a process supervisor). A RedisSettings retry policy does not help: redis-py 5 opens the
connection outside its retry loop. `arq` builds its own Worker from WorkerSettings, so the only
place to fix this without forking arq is the poll step itself: on a Redis error we log, wait, and
poll again. Jobs caught mid-flight are re-run by our reaper once their lease lapses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from arq.worker import Worker

from db.outages import REDIS_OUTAGE

log = logging.getLogger(__name__)

POLL_RETRY_S = 0.5
# A raw socket error escaping arq's poll is an outage here too.
POLL_OUTAGE: tuple[type[Exception], ...] = (*REDIS_OUTAGE, OSError)

_Poll = Callable[[Worker], Awaitable[None]]


def survive_redis_outages(poll: _Poll) -> _Poll:
    async def poll_through_outages(worker: Worker) -> None:
        try:
            await poll(worker)
        except POLL_OUTAGE as exc:
            log.warning("Redis unavailable while polling (%r); polling again shortly", exc)
            await asyncio.sleep(POLL_RETRY_S)

    poll_through_outages.__wrapped__ = poll  # type: ignore[attr-defined]
    return poll_through_outages


def install() -> None:
    """Idempotent: wrap arq's poll step once per process."""
    current = Worker._poll_iteration
    if not hasattr(current, "__wrapped__"):
        Worker._poll_iteration = survive_redis_outages(current)  # type: ignore[method-assign,assignment]
