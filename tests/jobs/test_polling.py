"""arq's poll with hundreds of jobs in flight elsewhere: no per-job transaction for them; with a
backlog, a share of it a poll."""

from __future__ import annotations

import asyncio

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Worker
from redis.asyncio import Redis

from jobs import polling
from jobs.polling import CLAIMS_PER_POLL
from jobs.queue import call_job_id, enqueue_process_call
from jobs.resources import WorkerResources
from jobs.worker import make_functions


async def calls_of(redis: Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_jobs_running_elsewhere_cost_no_transaction_and_the_waiting_one_starts(
    redis: Redis, worker_resources: WorkerResources
):
    queue = ArqRedis(connection_pool=redis.connection_pool)
    for n in range(200):
        await enqueue_process_call(queue, f"elsewhere-{n}")
        # Another worker's.
        await redis.set(in_progress_key_prefix + call_job_id(f"elsewhere-{n}"), b"1")
    await enqueue_process_call(queue, "waiting")
    worker = Worker(
        functions=make_functions(60),
        redis_pool=queue,
        burst=True,
        max_jobs=100,  # arq reads 5 x max_jobs ids per poll: all of ours
        handle_signals=False,
        ctx={"resources": worker_resources},
    )
    watches = await calls_of(redis, "watch")

    for _ in range(3):
        await worker._poll_iteration()

    assert await calls_of(redis, "watch") == watches  # no per-job transaction at all
    assert worker._jobs_started() == 1  # the waiting one
    # The others were left to the worker running them: their markers are as it set them.
    assert await redis.ttl(in_progress_key_prefix + call_job_id("elsewhere-7")) == -1
    # The waiting job runs to its end before the worker closes: close() cancels what still
    # runs, and a cancelled job's gather raises (one CI run's failure, on a loaded machine).
    await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 30)
    await worker.close()


async def test_a_poll_claims_a_share_of_a_backlog_and_leaves_the_rest_to_other_workers(
    redis: Redis, worker_resources: WorkerResources, monkeypatch: pytest.MonkeyPatch
):
    # A burst of completions: 120 jobs waiting, and room for 1,000 in the worker. It claims at
    # most CLAIMS_PER_POLL a poll, so a second worker polling meanwhile gets its part.
    queue = ArqRedis(connection_pool=redis.connection_pool)
    waiting = [f"burst-{n}" for n in range(120)]
    for call_id in waiting:
        await enqueue_process_call(queue, call_id)
    started: list[str] = []

    async def start(_: Worker, job_id: str, score: int) -> None:  # the claimed job, not run
        started.append(job_id)

    monkeypatch.setattr(polling, "_start", start)
    worker = Worker(
        functions=make_functions(60),
        redis_pool=queue,
        burst=True,
        max_jobs=1000,
        handle_signals=False,
        ctx={"resources": worker_resources},
    )
    try:
        await worker._poll_iteration()
    finally:
        await worker.close()

    assert len(started) == CLAIMS_PER_POLL
    markers = await redis.mget([in_progress_key_prefix + call_job_id(c) for c in waiting])
    marked = {c for c, marker in zip(waiting, markers, strict=True) if marker is not None}
    assert marked == {j.removeprefix("call:") for j in started}  # the rest wait, unmarked
    assert await redis.zcard(queue.default_queue_name) == len(waiting)
