"""arq's poll with hundreds of jobs in flight elsewhere: no per-job transaction for them."""

from __future__ import annotations

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Worker
from redis.asyncio import Redis

from jobs.queue import enqueue_process_call
from jobs.resources import WorkerResources
from jobs.worker import make_functions


async def watch_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_watch", {}).get("calls", 0))


async def test_jobs_running_on_another_worker_are_not_rechecked_with_a_transaction(
    redis: Redis, worker_resources: WorkerResources
):
    queue = ArqRedis(connection_pool=redis.connection_pool)
    for n in range(200):
        await enqueue_process_call(queue, f"elsewhere-{n}")
        await redis.set(in_progress_key_prefix + f"elsewhere-{n}", b"1")  # another worker's
    await enqueue_process_call(queue, "waiting")
    worker = Worker(
        functions=make_functions(60),
        redis_pool=queue,
        burst=True,
        max_jobs=100,  # arq reads 5 x max_jobs ids per poll: all of ours
        handle_signals=False,
        ctx={"resources": worker_resources},
    )
    before = await watch_calls(redis)

    for _ in range(3):
        await worker._poll_iteration()

    assert await watch_calls(redis) - before == 1  # only for the waiting job, once
    assert worker._jobs_started() == 1
    await worker.close()
