"""arq's poll with hundreds of jobs in flight elsewhere: no per-job transaction for them; with a
backlog, a share of it a poll. An idle worker waits for a wake instead of polling."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import Job
from arq.worker import Worker
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from jobs import polling
from jobs.polling import CLAIMS_PER_POLL, IDLE_POLL_S, QueueWake
from jobs.queue import (
    call_job_id,
    enqueue_erasure,
    enqueue_follow_up,
    enqueue_process_call,
    idle_key,
    requeue_orphan,
    wake_channel,
)
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


async def until(condition: Callable[[], bool], within_s: float = 5.0, step_s: float = 0.01) -> None:
    async with asyncio.timeout(within_s):
        for _ in range(int(within_s / step_s) + 1):
            if condition():
                return
            await asyncio.sleep(step_s)


@dataclass
class Wait:
    """One wait of an idle worker, as its QueueWake saw it, with the queue reads around it."""

    began: float
    seconds: float
    reads_before: int
    woken: bool | None = None  # None while it waits
    reads_after: int | None = None


class IdleWorker:
    """A worker with make run's poll delay and a QueueWake, running in this loop. The jobs it
    claims are noted (job id, when, the queue's reads so far) and taken off the queue as if
    they had run, and its waits are noted: tests state what it did, not how long it took, so a
    loaded machine slows them without failing them."""

    def __init__(self, queue: ArqRedis, resources: WorkerResources) -> None:
        self.queue = queue
        self.wake = QueueWake(queue, queue.default_queue_name)
        self.worker = Worker(
            functions=make_functions(60),
            redis_pool=queue,
            poll_delay=0.05,
            handle_signals=False,
            ctx={"resources": resources, polling.WAKE_CTX_KEY: self.wake},
        )
        self.task: asyncio.Task[None] | None = None  # the worker's main(), once started
        self.started: dict[str, float] = {}
        self.reads_at_claim: dict[str, int] = {}
        self.waits: list[Wait] = []
        waits_for_a_wake = self.wake.wait

        async def noted_wait(seconds: float) -> bool:
            wait = Wait(time.monotonic(), seconds, await calls_of(queue, "zrangebyscore"))
            self.waits.append(wait)
            woken = await waits_for_a_wake(seconds)
            wait.reads_after = await calls_of(queue, "zrangebyscore")
            wait.woken = woken
            return woken

        self.wake.wait = noted_wait  # type: ignore[method-assign]

    async def start(self) -> None:
        self.wake.start()
        self.task = asyncio.create_task(self.worker.main())
        await until(lambda: self.wake.listening)

    async def claimed(self, job_id: str, within_s: float) -> float:
        """When `job_id` was claimed (time.monotonic()), waiting at most `within_s` for it."""
        await until(lambda: job_id in self.started, within_s, step_s=0.002)
        return self.started[job_id]

    async def waiting(self, since: float = 0.0) -> Wait:
        """The wait the worker is in, once it is in one that began after `since`."""

        def current() -> Wait | None:
            last = self.waits[-1] if self.waits else None
            return last if last and last.woken is None and last.began > since else None

        await until(lambda: current() is not None)
        wait = current()
        assert wait is not None
        return wait

    async def waited(self, wait: Wait) -> Wait:
        """`wait`, once it has ended."""
        await until(lambda: wait.woken is not None, IDLE_POLL_S + 5.0)
        return wait

    async def note(self, worker: Worker, job_id: str, score: int) -> None:
        """In place of polling._start: the claimed job noted, and off the queue as if run."""
        reads = await calls_of(self.queue, "zrangebyscore")
        self.reads_at_claim.setdefault(job_id, reads)
        self.started.setdefault(job_id, time.monotonic())  # last: what `claimed` waits for
        await worker.pool.zrem(worker.queue_name, job_id)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.wake.stop()
        await self.worker.close()


@pytest.fixture
async def idle_worker(
    queue: Redis, worker_resources: WorkerResources, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[IdleWorker]:
    idle = IdleWorker(ArqRedis(connection_pool=queue.connection_pool), worker_resources)
    monkeypatch.setattr(polling, "_start", idle.note)
    yield idle
    await idle.close()


async def test_an_idle_worker_reads_the_queue_about_once_a_second_not_twenty_times(
    queue: Redis, idle_worker: IdleWorker
):
    await idle_worker.start()
    first = await idle_worker.waiting()
    second = await idle_worker.waiting(since=first.began)
    third = await idle_worker.waiting(since=second.began)

    # arq's poll every 50 ms would be 20 reads a second; waiting for a wake, a poll's read and
    # the two before its wait (what came meanwhile, the next deferred job's time), then a
    # whole IDLE_POLL_S with none.
    for wait, after in ((second, third), (first, second)):
        assert (wait.seconds, wait.woken) == (IDLE_POLL_S, False)
        assert wait.reads_after == wait.reads_before
        assert after.reads_before - wait.reads_before == 3


async def test_a_job_queued_to_an_idle_worker_is_started_by_its_wake(
    queue: Redis, idle_worker: IdleWorker
):
    # Polling every 50 ms, half of them would wait 25 ms or more; woken, a round trip or two.
    # (How long that takes on a quiet machine is bench idle's and the drain's to say.)
    await idle_worker.start()
    arq = ArqRedis(connection_pool=queue.connection_pool)
    for n in range(5):
        wait = await idle_worker.waiting()
        assert await enqueue_process_call(arq, f"woken-{n}")
        await idle_worker.claimed(call_job_id(f"woken-{n}"), 5.0)

        assert wait.woken is True
        assert wait.reads_after == wait.reads_before  # woken, not read in a poll
        assert idle_worker.reads_at_claim[call_job_id(f"woken-{n}")] == wait.reads_after + 1


async def test_while_jobs_keep_coming_one_poll_claims_all_that_came_meanwhile(
    queue: Redis, idle_worker: IdleWorker
):
    # A job every 10 ms for a second: polls every 50 ms claim about five each, where a wake and
    # a read a job would cost a hundred claims.
    await idle_worker.start()
    arq = ArqRedis(connection_pool=queue.connection_pool)
    claims = await calls_of(queue, "evalsha")
    for n in range(100):
        await enqueue_process_call(arq, f"stream-{n}")
        await asyncio.sleep(0.01)
    await idle_worker.claimed(call_job_id("stream-99"), 5.0)

    # evalsha: the 100 enqueues' scripts and the claims
    assert await calls_of(queue, "evalsha") - claims - 100 <= 40


async def waits_after_one_more_poll(idle_worker: IdleWorker, job_id: str) -> None:
    """After claiming `job_id`, the worker polls once more (its read and the two before its
    wait) and then waits a whole IDLE_POLL_S without reading the queue."""
    claimed = await idle_worker.claimed(job_id, 5.0)
    wait = await idle_worker.waited(await idle_worker.waiting(since=claimed))

    assert wait.reads_before - idle_worker.reads_at_claim[job_id] == 3
    assert (wait.seconds, wait.woken) == (IDLE_POLL_S, False)
    assert wait.reads_after == wait.reads_before


async def test_a_worker_polls_once_more_after_a_claim_then_waits(
    queue: Redis, idle_worker: IdleWorker
):
    await idle_worker.start()
    await enqueue_process_call(ArqRedis(connection_pool=queue.connection_pool), "last")

    await waits_after_one_more_poll(idle_worker, call_job_id("last"))


async def test_a_cron_run_does_not_keep_a_worker_polling(queue: Redis, idle_worker: IdleWorker):
    # The reaper runs every 2 s whatever the traffic.
    await idle_worker.start()
    await ArqRedis(connection_pool=queue.connection_pool).enqueue_job(
        "cron:reap_orphaned_calls", _job_id="cron:reap_orphaned_calls:1"
    )  # as arq's cron queues it

    await waits_after_one_more_poll(idle_worker, "cron:reap_orphaned_calls:1")


async def test_a_worker_told_to_stop_during_its_wait_takes_no_job_after_it(
    queue: Redis, idle_worker: IdleWorker
):
    await idle_worker.start()
    wait = await idle_worker.waiting()
    idle_worker.worker.allow_pick_jobs = False  # what arq's SIGTERM handler does first

    await enqueue_process_call(ArqRedis(connection_pool=queue.connection_pool), "too-late")
    await idle_worker.waited(wait)
    await asyncio.sleep(0.2)  # arq's next polls, had it not stopped picking

    assert wait.woken is True
    assert idle_worker.started == {}
    assert await queue.zscore("arq:queue", call_job_id("too-late")) is not None  # for another


async def test_a_deferred_job_starts_at_its_time_while_the_worker_waits(
    queue: Redis, idle_worker: IdleWorker
):
    await idle_worker.start()
    arq = ArqRedis(connection_pool=queue.connection_pool)
    await idle_worker.waiting()
    queued = time.monotonic()
    # Due in 0.6 s: a loaded machine's stalls of a few 100 ms still leave a wait before it.
    assert await enqueue_follow_up(arq, "deferred", 0.6, tag=1)

    started = await idle_worker.claimed("segment:follow.1:deferred", 5.0)

    # Not before its time, and not a whole IDLE_POLL_S late: the wait ends at its due time.
    assert started - queued >= 0.58
    until_due = [w for w in idle_worker.waits if w.began > queued and w.seconds < IDLE_POLL_S]
    assert until_due, idle_worker.waits
    assert until_due[-1].seconds <= 0.6
    assert until_due[-1].woken is False
    assert until_due[-1].began < started


async def test_a_worker_that_lost_its_wake_channel_polls_meanwhile_and_subscribes_again(
    queue: Redis, idle_worker: IdleWorker, caplog: pytest.LogCaptureFixture
):
    await idle_worker.start()
    await idle_worker.waiting()
    caplog.set_level(logging.WARNING, logger="jobs.polling")

    await queue.client_kill_filter(_type="pubsub")

    # The loss is said, the channel taken up again, and a job queued after it wakes the worker.
    await until(lambda: "wake channel lost" in caplog.text)
    await until(lambda: idle_worker.wake.listening)
    assert await queue.pubsub_numsub(wake_channel("arq:queue")) == [(b"arq:queue:wake", 1)]
    wait = await idle_worker.waiting(since=time.monotonic())
    await enqueue_erasure(ArqRedis(connection_pool=queue.connection_pool), "after", "call")
    await idle_worker.claimed("erase:call:after", 5.0)
    assert wait.woken is True


async def test_a_worker_not_subscribed_polls_as_arq_does(queue: Redis, idle_worker: IdleWorker):
    # The wake never started (or its Redis refuses pub/sub): every 50 ms, and jobs start.
    idle_worker.task = asyncio.create_task(idle_worker.worker.main())
    reads = await calls_of(queue, "zrangebyscore")
    for _ in range(100):  # 5 s at most; 10 reads take half a second
        if await calls_of(queue, "zrangebyscore") - reads >= 10:
            break
        await asyncio.sleep(0.05)
    assert await calls_of(queue, "zrangebyscore") - reads >= 10
    await enqueue_process_call(ArqRedis(connection_pool=queue.connection_pool), "polled")
    await idle_worker.claimed(call_job_id("polled"), 2.0)
    assert idle_worker.waits == []


async def test_a_wake_that_comes_before_the_wait_is_kept_for_it(queue: Redis):
    wake = QueueWake(ArqRedis(connection_pool=queue.connection_pool), "arq:queue")
    wake.ring()  # between the worker's read of the queue and its wait

    assert await wake.wait(5.0) is True  # at once
    assert await wake.wait(0.05) is False  # taken: the next wait waits


async def test_a_wake_from_before_the_read_that_precedes_a_wait_does_not_end_that_wait(
    queue: Redis, idle_worker: IdleWorker, monkeypatch: pytest.MonkeyPatch
):
    # A wake for a job the worker has claimed already (its poll read the job before the wake
    # came): the read before the wait sees what the wake was for, so the wait waits.
    monkeypatch.setattr(polling, "IDLE_POLL_S", 0.2)
    idle_worker.wake.start()
    await until(lambda: idle_worker.wake.listening)  # subscribed, and rung for it
    idle_worker.wake.ring()  # and a job's wake

    assert await polling._after_a_wait(idle_worker.worker, []) == []

    assert [(w.seconds, w.woken) for w in idle_worker.waits] == [(0.2, False)]


async def test_an_enqueue_is_one_round_trip_that_wakes_workers_only_if_one_is_idle(queue: Redis):
    arq = ArqRedis(connection_pool=queue.connection_pool)
    async with queue.pubsub() as ear:
        await ear.subscribe(wake_channel(arq.default_queue_name))
        await ear.get_message(timeout=1.0)  # the subscription's own message
        transactions = await calls_of(queue, "watch") + await calls_of(queue, "multi")
        scripts = await calls_of(queue, "evalsha")

        assert await enqueue_process_call(arq, "busy") is True  # every worker busy: no wake
        await queue.set(idle_key(arq.default_queue_name), b"1")  # a worker waits
        assert await enqueue_process_call(arq, "once") is True
        assert await enqueue_process_call(arq, "once") is False  # queued already: no wake
        await queue.set(idle_key(arq.default_queue_name), b"1")
        assert await enqueue_process_call(arq, "once") is False  # nor with a worker waiting

        assert (await ear.get_message(timeout=1.0))["type"] == "message"
        assert await ear.get_message(timeout=0.2) is None
    assert await calls_of(queue, "watch") + await calls_of(queue, "multi") == transactions
    assert await calls_of(queue, "evalsha") - scripts == 4  # one round trip an enqueue
    # arq reads the job as its own (the job test above runs one to its end).
    assert await arq.zscore(arq.default_queue_name, call_job_id("once")) is not None
    job = await Job(call_job_id("once"), arq).info()
    assert job is not None
    assert (job.function, job.args) == ("process_call", ("once",))
    # Its key lives as long as arq's would: a day past its due time.
    assert 86_390_000 < await queue.pttl(job_key_prefix + call_job_id("once")) <= 86_400_000


async def test_a_released_orphan_whose_wake_cannot_be_sent_is_still_released_and_says_so(
    queue: Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    arq = ArqRedis(connection_pool=queue.connection_pool)
    await enqueue_process_call(arq, "orphan")
    await queue.set(in_progress_key_prefix + call_job_id("orphan"), b"1")  # its worker died

    async def refused(*_: object) -> int:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(arq, "publish", refused)
    caplog.set_level(logging.WARNING, logger="jobs.queue")

    assert await requeue_orphan(arq, "orphan") is True
    assert await queue.exists(in_progress_key_prefix + call_job_id("orphan")) == 0
    assert "could not wake idle workers" in caplog.text


async def test_a_redis_user_allowed_no_channels_still_queues_and_its_workers_poll(
    queue: Redis, worker_resources: WorkerResources, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    # Redis 7 gives a new ACL user no pub/sub channels (acl-pubsub-default resetchannels).
    await queue.acl_setuser(
        "nochannels", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all"],
        reset_channels=True,
    )  # fmt: skip
    caplog.set_level(logging.WARNING, logger="jobs.polling")
    kwargs = queue.connection_pool.connection_kwargs
    limited = Redis(host=kwargs["host"], port=kwargs["port"], username="nochannels",
                    password="secret")  # fmt: skip
    try:
        arq = ArqRedis(connection_pool=limited.connection_pool)
        idle = IdleWorker(arq, worker_resources)
        monkeypatch.setattr(polling, "_start", idle.note)
        idle.wake.start()
        idle.task = asyncio.create_task(idle.worker.main())
        await until(lambda: "cannot subscribe" in caplog.text)
        await queue.set(idle_key(arq.default_queue_name), b"1")  # as if another worker waited

        assert await enqueue_process_call(arq, "no-channels") is True

        await idle.claimed(call_job_id("no-channels"), 2.0)  # polled every 50 ms
        assert idle.wake.listening is False
        await idle.close()
    finally:
        await limited.aclose()
        await queue.acl_deluser("nochannels")
