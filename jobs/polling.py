"""Make arq's poll cheap when hundreds of jobs are in flight.

arq keeps running jobs in its queue (a sorted set) until they finish, and on every poll its
`start_jobs` checks each id it read with a WATCH transaction of three round trips, even for jobs
that this worker or another one is running. With hundreds of calls in flight that is thousands of
round trips every poll. We replace `start_jobs` (arq accepts only security fixes now, so code we
own is the way): ids this worker runs are dropped without I/O, ids seen running elsewhere are left
alone for a moment, and the rest are claimed with one script call (db/lua/claim_jobs.lua), as
atomic as arq's transaction. What happens to a claimed job is arq's own code (`run_job`).
"""

from __future__ import annotations

import time

from arq.utils import timestamp_ms
from arq.worker import Worker

from db.scripts import Script, register
from jobs.queue import IN_PROGRESS_KEY_PREFIX

# How long a job seen running on another worker is not looked at again. Short: if that worker
# dies, the reaper releases the job and this worker should see it within a poll or two.
RUNNING_ELSEWHERE_TTL_S = 1.0
# At most this many jobs claimed a poll (arq polls every 50 ms: up to 1,000 a second a worker;
# the ids past the last one claimed are looked at in the next polls).
# Without a cap the first worker to poll after a burst of completions claimed all of it, up to
# WORKER_MAX_JOBS (1,000), and ran it on its one core while the others idled: one of make run's
# two workers did 62-72% of a 500-call drain's work (BENCHMARKS.md, issue 27).
CLAIMS_PER_POLL = 50


async def start_waiting_jobs(worker: Worker, job_ids: list[bytes]) -> None:
    now = time.monotonic()
    # job id -> when it was last seen running elsewhere; kept on the worker it serves.
    seen_running: dict[str, float] = vars(worker).setdefault("_seen_running_elsewhere", {})
    if len(seen_running) > 10_000:
        _forget_stale(seen_running, now)
    free = worker.max_jobs - worker.job_counter
    candidates = [
        job_id
        for job_id in (j.decode() for j in job_ids)
        if job_id not in worker.tasks
        and now - seen_running.get(job_id, -RUNNING_ELSEWHERE_TTL_S) >= RUNNING_ELSEWHERE_TTL_S
    ][: max(free, 0)]
    if not candidates:
        return
    claim = vars(worker).get("_claim_jobs_script")
    if claim is None:
        claim = vars(worker)["_claim_jobs_script"] = register(worker.pool, Script.CLAIM_JOBS)
    ttl_ms = int(worker.in_progress_timeout_s * 1000)
    most = min(free, CLAIMS_PER_POLL)
    args: list[str | int] = [timestamp_ms(), ttl_ms, IN_PROGRESS_KEY_PREFIX, most, *candidates]
    raw = [
        v.decode() if isinstance(v, bytes) else v for v in await claim([worker.queue_name], args)
    ]
    split = raw.index("")
    for job_id in raw[split + 1 :]:
        seen_running[job_id] = now
    claimed = raw[:split]
    for job_id, score in zip(claimed[::2], claimed[1::2], strict=True):
        seen_running.pop(job_id, None)
        await _start(worker, job_id, int(float(score)))


async def _start(worker: Worker, job_id: str, score: int) -> None:
    """What arq's start_jobs does once a job is claimed: count it and run it."""
    await worker.sem.acquire()  # free at once: at most max_jobs - running were claimed
    worker.job_counter += 1
    task = worker.loop.create_task(worker.run_job(job_id, score))
    task.add_done_callback(lambda _: worker._release_sem_dec_counter_on_complete())
    worker.tasks[job_id] = task


def _forget_stale(seen_running: dict[str, float], now: float) -> None:
    for job_id, seen in list(seen_running.items()):
        if now - seen >= RUNNING_ELSEWHERE_TTL_S:
            del seen_running[job_id]


def install() -> None:
    """Idempotent: replace arq's start_jobs once per process."""
    if Worker.start_jobs is not start_waiting_jobs:
        Worker.start_jobs = start_waiting_jobs  # type: ignore[method-assign,assignment]
