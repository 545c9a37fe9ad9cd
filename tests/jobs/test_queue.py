"""A call's job lives in a namespace of its own: no call id can block another job (a cron run's),
and no other job can block a call's; one job per call still, and the reaper still finds it."""

from __future__ import annotations

from arq.connections import ArqRedis
from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix
from httpx import AsyncClient
from redis.asyncio import Redis

from jobs.queue import call_job_id, enqueue_process_call, requeue_orphan
from jobs.resources import WorkerResources
from tests.factories import send_all

# What arq names a run of our idle sweep (`cron:<name>:<ms>`); a legal call id too.
CRON_LIKE = "cron:sweep_idle_calls:123"


async def test_a_call_named_like_a_cron_run_is_processed_and_the_cron_run_left_alone(
    client: AsyncClient, run_worker, redis: Redis
):
    # The cron run of that name is queued and running on some worker.
    cron_job, cron_marker = job_key_prefix + CRON_LIKE, in_progress_key_prefix + CRON_LIKE
    await redis.set(cron_job, b"the cron run's job")
    await redis.set(cron_marker, b"1")

    await send_all(client, CRON_LIKE, [0, 1])
    assert (await client.post(f"/v1/call/complete/{CRON_LIKE}")).status_code == 202
    assert await redis.zrange(default_queue_name, 0, -1) == [call_job_id(CRON_LIKE).encode()]

    worker = await run_worker()

    assert worker.jobs_complete == 1
    call = (await client.get(f"/v1/calls/{CRON_LIKE}")).json()
    assert call["state"] == "ARCHIVED"
    assert call["transcript"] == "chunk-0 chunk-1"
    assert await redis.get(cron_job) == b"the cron run's job"
    assert await redis.exists(cron_marker)


async def test_one_job_per_call_and_the_reaper_releases_its_own_marker_only(
    redis: Redis, worker_resources: WorkerResources
):
    queue = ArqRedis(connection_pool=redis.connection_pool)
    assert await enqueue_process_call(queue, CRON_LIKE)
    assert not await enqueue_process_call(queue, CRON_LIKE)  # still exactly one job
    job = call_job_id(CRON_LIKE)
    assert await redis.zrange(default_queue_name, 0, -1) == [job.encode()]

    # Its worker died holding it; a cron run of the same spelling is running elsewhere.
    await redis.set(in_progress_key_prefix + job, b"1")
    await redis.set(in_progress_key_prefix + CRON_LIKE, b"1")
    assert await requeue_orphan(queue, CRON_LIKE)

    assert not await redis.exists(in_progress_key_prefix + job)
    assert await redis.exists(in_progress_key_prefix + CRON_LIKE)


def test_no_call_id_makes_the_job_id_of_a_cron_run():
    assert not call_job_id(CRON_LIKE).startswith("cron:")
    assert call_job_id("a") != call_job_id("call:a")
