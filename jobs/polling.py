"""Make arq's poll cheap when hundreds of jobs are in flight.

arq keeps running jobs in its queue (a sorted set) until they finish, and on every poll its
`start_jobs` checks each id it read with a WATCH transaction of three round trips, even for jobs
that this worker or another one is running. With hundreds of calls in flight that is thousands
of round trips every poll. We wrap `start_jobs` (arq accepts only security fixes now, so a
wrapper we own is the way): ids this worker runs are dropped without I/O, ids seen running
elsewhere are remembered for a moment, and the rest are checked with one pipelined EXISTS before
arq's own transaction runs for the few that are really waiting.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from arq.constants import in_progress_key_prefix
from arq.worker import Worker

# How long a job seen running on another worker is not looked at again. Short: if that worker
# dies, the reaper releases the job and this worker should see it within a poll or two.
RUNNING_ELSEWHERE_TTL_S = 1.0

_StartJobs = Callable[[Worker, list[bytes]], Awaitable[None]]


def start_only_waiting_jobs(start_jobs: _StartJobs) -> _StartJobs:
    async def start_waiting(worker: Worker, job_ids: list[bytes]) -> None:
        now = time.monotonic()
        # job id -> when it was last seen running elsewhere; kept on the worker it serves.
        seen_running: dict[bytes, float] = vars(worker).setdefault("_seen_running_elsewhere", {})
        if len(seen_running) > 10_000:
            _forget_stale(seen_running, now)
        unknown = [
            j
            for j in job_ids
            if j.decode() not in worker.tasks
            and now - seen_running.get(j, -RUNNING_ELSEWHERE_TTL_S) >= RUNNING_ELSEWHERE_TTL_S
        ]
        if not unknown:
            return
        async with worker.pool.pipeline(transaction=False) as pipe:
            for job_id in unknown:
                pipe.exists(in_progress_key_prefix + job_id.decode())
            running = await pipe.execute()
        waiting = []
        for job_id, is_running in zip(unknown, running, strict=True):
            if is_running:
                seen_running[job_id] = now
            else:
                seen_running.pop(job_id, None)
                waiting.append(job_id)
        if waiting:
            await start_jobs(worker, waiting)

    start_waiting.__wrapped__ = start_jobs  # type: ignore[attr-defined]
    return start_waiting


def _forget_stale(seen_running: dict[bytes, float], now: float) -> None:
    for job_id, seen in list(seen_running.items()):
        if now - seen >= RUNNING_ELSEWHERE_TTL_S:
            del seen_running[job_id]


def install() -> None:
    """Idempotent: wrap arq's start_jobs once per process."""
    current = Worker.start_jobs
    if not hasattr(current, "__wrapped__"):
        Worker.start_jobs = start_only_waiting_jobs(current)  # type: ignore[method-assign,assignment]
