"""Recovery without a chaos run: the reaper, the fence, and PostgreSQL being away."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest
from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from db import calls
from db.keys import call_keys
from db.states import CallState
from devstack.servers import free_port
from jobs.ai import TransientAIError
from jobs.flushing import flush_call
from jobs.process import process_call, release_if_settled
from jobs.queue import call_job_id
from jobs.resources import WorkerResources
from jobs.sweep import recover_orphaned_calls
from service.app import create_asgi
from settings import Settings
from tests.factories import complete, scalar, send, send_all

# Ingestion, completion, the worker and recovery hold on a Redis Cluster as on one Redis.
pytestmark = pytest.mark.both_topologies


def quick_lease(res: WorkerResources) -> WorkerResources:
    return dataclasses.replace(res, settings=res.settings.model_copy(update={"lease_ttl_s": 0.2}))


async def test_reaper_reruns_a_job_whose_worker_died(
    client: AsyncClient, run_worker, worker_resources: WorkerResources
):
    res = quick_lease(worker_resources)
    await send_all(client, "orphan", [0, 1])
    await complete(client, "orphan")
    # A worker picked the job up and died: arq's in-progress marker stays, nobody renews a lease.
    await res.queue.set(in_progress_key_prefix + call_job_id("orphan"), b"1", px=600_000)

    await asyncio.sleep(0.25)
    assert await recover_orphaned_calls(res) == ["orphan"]
    await run_worker(res)

    assert (await client.get("/v1/calls/orphan")).json()["state"] == "ARCHIVED"


async def test_reaper_reenqueues_a_completion_whose_job_was_lost(
    client: AsyncClient, run_worker, worker_resources: WorkerResources
):
    res = quick_lease(worker_resources)
    await send(client, "lost", 0)
    await complete(client, "lost")
    # A crash between SET NX and the enqueue.
    await res.queue.delete(default_queue_name, job_key_prefix + call_job_id("lost"))

    await asyncio.sleep(0.25)
    assert await recover_orphaned_calls(res) == ["lost"]
    await run_worker(res)

    assert (await client.get("/v1/calls/lost")).json()["state"] == "ARCHIVED"


async def test_reaper_leaves_calls_with_a_live_lease_alone(
    client: AsyncClient, worker_resources: WorkerResources
):
    res = quick_lease(worker_resources)
    await send(client, "busy", 0)
    await complete(client, "busy")
    await res.leases.take("busy", "someone", ttl_s=30)
    await asyncio.sleep(0.25)

    assert await recover_orphaned_calls(res) == []


async def test_reaper_releases_a_call_that_finished_but_kept_its_keys(
    client: AsyncClient, worker_resources: WorkerResources
):
    res = quick_lease(worker_resources)
    await send(client, "done", 0)
    await complete(client, "done")
    await process_call(res, "done")
    # Its worker died after the commit: the release never happened, arq's marker stays.
    await res.redis.zadd(call_keys("done").shard.pending, {"done": time.time() - 10})
    await res.queue.set(in_progress_key_prefix + call_job_id("done"), b"1", px=600_000)

    assert await recover_orphaned_calls(res) == []
    assert await res.redis.zscore(call_keys("done").shard.pending, "done") is None


async def test_reaper_leaves_a_backlog_of_waiting_and_running_jobs_without_reading_postgresql(
    client: AsyncClient, worker_resources: WorkerResources, monkeypatch: pytest.MonkeyPatch
):
    # Calls completed past the lease's grace whose jobs wait their turn or run on a live worker
    # (a backlog, WORKER_MAX_JOBS at once): none is an orphan.
    res = quick_lease(worker_resources)
    waiting = [f"queued-{n}" for n in range(20)]
    running = [f"running-{n}" for n in range(5)]
    for call_id in waiting + running:
        await send(client, call_id, 0)
        await complete(client, call_id)
    for call_id in running:
        await res.queue.set(in_progress_key_prefix + call_job_id(call_id), b"1", px=600_000)
        await res.leases.take(call_id, "a-live-worker", ttl_s=30)
    await asyncio.sleep(0.25)
    read: list[str] = []
    settled = release_if_settled

    async def counted(res_: WorkerResources, call_id: str) -> CallState | None:
        read.append(call_id)
        return await settled(res_, call_id)

    monkeypatch.setattr("jobs.sweep.release_if_settled", counted)

    assert await recover_orphaned_calls(res) == []
    assert read == []
    queued = await res.queue.zrange(default_queue_name, 0, -1)
    assert sorted(queued) == sorted(call_job_id(c).encode() for c in waiting + running)
    assert all([await res.queue.exists(job_key_prefix + j.decode()) for j in queued])


async def test_a_worker_with_a_stale_epoch_cannot_write(
    client: AsyncClient, worker_resources: WorkerResources, engine: AsyncEngine
):
    await send(client, "fenced", 0)
    await complete(client, "fenced")
    held = await flush_call(worker_resources, "fenced", "worker-a")  # the flush claims the call
    assert held is not None
    async with worker_resources.sessions() as session, session.begin():
        new = await calls.claim(session, "fenced")
    assert new is not None
    assert new.epoch == held.claim.epoch + 1

    async with worker_resources.sessions() as session, session.begin():
        moved = await calls.transition(
            session, "fenced", CallState.FAILED, "stale", epoch=held.claim.epoch
        )
    assert moved is False
    assert await scalar(engine, "SELECT state FROM call WHERE call_id='fenced'") == "PROCESSING_AI"

    async with worker_resources.sessions() as session, session.begin():
        assert await calls.transition(
            session, "fenced", CallState.FAILED, "current", epoch=new.epoch
        )


async def test_a_transition_outside_the_state_machine_is_refused(
    client: AsyncClient, worker_resources: WorkerResources, engine: AsyncEngine
):
    await send(client, "strict", 0)
    await complete(client, "strict")
    await flush_call(worker_resources, "strict", "worker-a")

    async with worker_resources.sessions() as session, session.begin():
        assert not await calls.transition(session, "strict", CallState.COMPLETED, "go back")
    assert await scalar(engine, "SELECT state FROM call WHERE call_id='strict'") == "PROCESSING_AI"


async def test_the_flush_is_idempotent(
    client: AsyncClient, worker_resources: WorkerResources, engine: AsyncEngine
):
    await send_all(client, "again", [0, 1, 2])
    await complete(client, "again")

    await asyncio.gather(*(flush_call(worker_resources, "again", f"w{n}") for n in range(3)))

    assert (
        await scalar(
            engine, "SELECT coalesce(sum(packets), 0) FROM call_segment WHERE call_id='again'"
        )
        == 3
    )
    assert await scalar(engine, "SELECT count(*) FROM call WHERE call_id='again'") == 1


@pytest.fixture
async def client_without_postgres(settings: Settings) -> AsyncIterator[AsyncClient]:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/callstream"
    app = create_asgi(settings.model_copy(update={"database_url": url}))
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as client,
    ):
        yield client


async def test_live_calls_stay_visible_while_postgres_is_down(client_without_postgres):
    assert (await send(client_without_postgres, "live", 0)).status_code == 202

    live = await client_without_postgres.get("/v1/calls/live")
    unknown = await client_without_postgres.get("/v1/calls/unknown")
    ready = await client_without_postgres.get("/readyz")

    assert live.status_code == 200
    assert live.json()["state"] == "IN_PROGRESS"
    assert unknown.status_code == 503
    assert unknown.json()["code"] == "postgres_unavailable"
    assert ready.status_code == 503
    assert ready.json()["checks"]["postgres"].startswith("unavailable")


async def test_the_job_retries_later_while_postgres_is_down(
    client: AsyncClient, worker_resources: WorkerResources, settings: Settings, ai
):
    from arq import Retry

    from jobs.resources import make_resources
    from jobs.worker import process_call_job

    await send(client, "waiting", 0)
    await complete(client, "waiting")
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/callstream"
    down = make_resources(settings.model_copy(update={"database_url": url}), ai=ai)
    try:
        with pytest.raises(Retry):
            await process_call_job({"resources": down, "job_try": 1}, "waiting")
    finally:
        await down.close()
    assert await worker_resources.redis.exists(call_keys("waiting").packets)


async def test_reaper_finds_a_flushed_call_that_redis_forgot(
    client: AsyncClient, run_worker, worker_resources: WorkerResources, ai
):
    res = quick_lease(worker_resources)
    ai.fail("transcription", *[TransientAIError("down")] * 5)
    await send(client, "forgotten", 0)
    await complete(client, "forgotten")
    await run_worker(res)
    assert (await client.post("/v1/calls/forgotten/retry")).status_code == 202
    # Redis loses the replay's queue entry and its pending mark (say, a crash before fsync).
    await res.queue.delete(default_queue_name, job_key_prefix + call_job_id("forgotten"))
    await res.redis.zrem(call_keys("forgotten").shard.pending, "forgotten")

    await asyncio.sleep(0.3)  # past the grace (the lease TTL): the row looks stalled
    assert await recover_orphaned_calls(res) == ["forgotten"]
    await run_worker(res)

    assert (await client.get("/v1/calls/forgotten")).json()["state"] == "ARCHIVED"


async def test_a_job_for_a_call_nobody_knows_is_dropped_not_retried_forever(
    worker_resources: WorkerResources,
):
    await worker_resources.redis.zadd(call_keys("ghost").shard.pending, {"ghost": time.time() - 60})

    assert await process_call(worker_resources, "ghost") == "UNKNOWN"
    assert await worker_resources.redis.zscore(call_keys("ghost").shard.pending, "ghost") is None
