"""Make arq's poll cheap when hundreds of jobs are in flight.

arq keeps running jobs in its queue (a sorted set) until they finish, and on every poll its
`start_jobs` checks each id it read with a WATCH transaction of three round trips, even for jobs
that this worker or another one is running. With hundreds of calls in flight that is thousands of
round trips every poll. We replace `start_jobs` (arq accepts only security fixes now, so code we
own is the way): ids this worker runs are dropped without I/O, ids seen running elsewhere are left
alone for a moment, and the rest are claimed with one script call (db/lua/claim_jobs.lua), as
atomic as arq's transaction. What happens to a claimed job is arq's own code (`run_job`).

A worker does not poll 20 times a second for nothing either: when a poll claims nothing, it says
it is idle (jobs/queue.py's idle_key) and waits for a wake (an enqueue that finds the marker
publishes one: jobs/queue.py's _enqueue), for the next deferred job's time, or for IDLE_POLL_S,
whichever comes first, and then reads the queue again at once. A poll that claimed is followed
by another in 50 ms, as arq does: while jobs come faster than that, one poll claims all that
came meanwhile, cheaper than a wake and a read a job. So a job queued to an idle worker starts
within a round trip instead of within arq's poll delay, and an idle stack no longer pays for 40
empty polls a second (BENCHMARKS.md, "What an idle stack costs").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from db.scripts import Script, registered
from jobs.queue import IN_PROGRESS_KEY_PREFIX, idle_key, wake_channel
from jobs.resilience import POLL_OUTAGE

log = logging.getLogger(__name__)

# How long a job seen running on another worker is not looked at again. Short: if that worker
# dies, the reaper releases the job and this worker should see it within a poll or two.
RUNNING_ELSEWHERE_TTL_S = 1.0
# At most this many jobs claimed a poll (arq polls every 50 ms: up to 1,000 a second a worker;
# the ids past the last one claimed are looked at in the next polls).
# Without a cap the first worker to poll after a burst of completions claimed all of it, up to
# WORKER_MAX_JOBS (1,000), and ran it on its one core while the others idled: one of make run's
# two workers did 62-72% of a 500-call drain's work (BENCHMARKS.md, issue 27).
CLAIMS_PER_POLL = 50
# An idle worker reads the queue at least this often, woken or not: a wake it missed (its
# subscription down, an enqueue from outside jobs/queue.py) costs at most this much delay; and
# arq queues a cron run only from a poll, at most a second ahead of its time.
IDLE_POLL_S = 1.0
# Where a worker's QueueWake lives: its ctx, set by jobs/worker.py's startup. A worker without
# one (a test's, a burst run) polls every poll_delay, as arq does.
WAKE_CTX_KEY = "queue_wake"
# A lost subscription is tried again after this long; meanwhile the worker polls every 50 ms.
RESUBSCRIBE_S = 0.5


class QueueWake:
    """A worker's ear on its queue's wake channel. `wait` returns when a job may be waiting:
    a wake was published, or the subscription was lost or made (what was published meanwhile
    was missed). A wake is kept until a wait takes it or a read of the queue makes it stale, so
    one that comes between that read and the wait after it ends the wait at once: none is lost,
    at worst one read more."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self._redis = redis
        self._channel = wake_channel(queue_name)
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = False  # subscribed: only then may a worker wait longer than a poll

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="queue-wake")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def ring(self) -> None:
        self._woken.set()

    def forget(self) -> None:
        """Drop a kept wake: called before a read of the queue that sees what it was for (a
        wake is published with its job, so a job whose wake came before the read is in it)."""
        self._woken.clear()

    async def wait(self, seconds: float) -> bool:
        """True if woken within `seconds` (the wake is taken), False at the timeout."""
        try:
            async with asyncio.timeout(seconds):
                await self._woken.wait()
        except TimeoutError:
            return False
        self._woken.clear()
        return True

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    self.listening = True
                    self.ring()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self.ring()
            except POLL_OUTAGE as exc:
                log.warning("queue wake channel lost (%r); polling every 50 ms meanwhile", exc)
            except ResponseError as exc:  # an ACL with no pub/sub channels for this user
                log.warning("cannot subscribe to %s (%r): polling every 50 ms", self._channel, exc)
                return
            finally:
                if self.listening:
                    self.listening = False
                    self.ring()
            await asyncio.sleep(RESUBSCRIBE_S)


def queue_wake(worker: Worker) -> QueueWake | None:
    wake = worker.ctx.get(WAKE_CTX_KEY)
    return wake if isinstance(wake, QueueWake) else None


async def start_waiting_jobs(worker: Worker, job_ids: list[bytes]) -> None:
    if await _claim(worker, job_ids) or len(job_ids) >= worker.queue_read_limit:
        return  # claimed some (more may be coming: poll again in 50 ms), or ids beyond the read
    again = await _after_a_wait(worker, job_ids)
    if again:
        await _claim(worker, again)


async def _claim(worker: Worker, job_ids: list[bytes]) -> int:
    """Claim and start what of `job_ids` no worker runs; how many were started."""
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
        return 0
    claim = registered(worker.pool, Script.CLAIM_JOBS)
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
    return len(claimed) // 2


async def _after_a_wait(worker: Worker, seen: list[bytes]) -> list[Any]:
    """This poll claimed nothing (nothing was due, or what was due runs somewhere): wait for a
    wake, for the next deferred job's time or for IDLE_POLL_S. Woken, the ids due (maybe none);
    else none, and arq's next poll reads them at once. A job queued since `seen` was read ends
    the wait before it starts. No wait at all (arq's next poll comes in poll_delay) for a
    worker with no QueueWake or none subscribed, and in a burst run (which ends when the
    queue is empty)."""
    wake = queue_wake(worker)
    if wake is None or not wake.listening or worker.burst:
        return []
    now = timestamp_ms()
    # A wake kept from before is for a job these reads see (one this poll claimed, most
    # often): kept, it would end the wait at once for nothing, a poll more after each claim.
    wake.forget()
    async with worker.pool.pipeline(transaction=False) as pipe:
        # The marker first: a job queued after it wakes this worker, and one queued before it
        # is in the reads after it.
        pipe.set(idle_key(worker.queue_name), b"1", px=round(1000 * (IDLE_POLL_S + 1)))
        pipe.zrangebyscore(
            worker.queue_name, min=float("-inf"), max=now, start=0, num=worker.queue_read_limit
        )
        pipe.zrangebyscore(
            worker.queue_name, min=f"({now}", max="+inf", start=0, num=1, withscores=True
        )
        _, due, upcoming = await pipe.execute()
    if set(due) - set(seen):
        return list(due)  # queued since the poll's read: no wait
    wait_s = IDLE_POLL_S
    if upcoming:
        wait_s = min(wait_s, (upcoming[0][1] - now) / 1000)
    if wait_s <= worker.poll_delay_s:
        return []  # arq's next poll, within poll_delay, is soon enough
    if not await wake.wait(wait_s):
        return []  # arq's next poll comes at once: this one took longer than poll_delay
    if not worker.allow_pick_jobs:
        return []  # shutting down (SIGTERM came during the wait): take nothing more
    ids: list[Any] = await worker.pool.zrangebyscore(
        worker.queue_name, min=float("-inf"), max=timestamp_ms(), start=0,
        num=worker.queue_read_limit,
    )  # fmt: skip
    return ids


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
