"""Every fact about arq that the rest of the code needs: the queue client, enqueueing a call's
job, the queue's depth and the workers' heartbeat, and putting an orphaned job back in reach.
The API reaches the worker only through this module, and nothing else names arq's keys."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from arq.connections import ArqRedis
from arq.constants import (
    health_check_key_suffix,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
)
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import ConnectionPool
from redis.exceptions import ResponseError

from db.outages import REDIS_OUTAGE
from db.scripts import Script, registered

log = logging.getLogger(__name__)

PROCESS_CALL = "process_call"
# A call's job has an id of its own kind: arq's job ids are one namespace, and its cron runs take
# ids of the form `cron:<name>:<ms>`, which a call id may spell too. With the prefix, no call id
# can name another job (a cron run's, or another call's), and none of theirs can name a call's.
CALL_JOB_PREFIX = "call:"


# arq's marker of a running job: the claim script (jobs/polling.py) sets it as arq does.
IN_PROGRESS_KEY_PREFIX = in_progress_key_prefix


def wake_channel(queue_name: str) -> str:
    """The channel an enqueue here publishes on once its job is queued, if a worker is idle: an
    idle worker waits on it (jobs/polling.py's QueueWake) instead of polling the queue 20 times
    a second."""
    return queue_name + ":wake"


def idle_key(queue_name: str) -> str:
    """Set by a worker about to wait for a wake (jobs/polling.py), taken by the enqueue that
    wakes it: while every worker is busy, enqueues publish nothing."""
    return queue_name + ":idle"


async def _enqueue(
    queue: ArqRedis, function: str, *args: object, _job_id: str, _defer_by: float | None = None,
    **kwargs: object,
) -> bool:  # fmt: skip
    """arq's enqueue_job, and a wake if a worker is idle, in one round trip
    (db/lua/enqueue_job.lua: arq's own takes three, and the wake would be a fourth). The job is
    arq's, byte for byte: its key, its expiry (a day past its due time), its score, its
    serialized form. False if a job or result of that id exists: nothing is queued then."""
    now_ms = timestamp_ms()
    due_ms = now_ms + round(1000 * (_defer_by or 0))
    job = serialize_job(function, args, kwargs, None, now_ms, serializer=queue.job_serializer)
    name = queue.default_queue_name
    queued = await registered(queue, Script.ENQUEUE_JOB)(
        keys=[job_key_prefix + _job_id, result_key_prefix + _job_id, name, idle_key(name)],
        args=[
            _job_id, due_ms, due_ms - now_ms + queue.expires_extra_ms, job, wake_channel(name),
        ],
    )  # fmt: skip
    return bool(queued)


# An outage, or a Redis user whose ACL allows it no pub/sub channel.
_NUDGE_REFUSED: tuple[type[Exception], ...] = (*REDIS_OUTAGE, ResponseError)


async def wake_workers(queue: ArqRedis) -> None:
    """Tell idle workers to read the queue now, after a job already queued was made runnable (an
    orphan's marker released). A nudge, not the job: a worker that misses it (not subscribed yet,
    its connection lost) reads the queue within jobs/polling.py's IDLE_POLL_S anyway. So an
    outage here is logged, not raised: raising would report the release as failed."""
    try:
        await queue.publish(wake_channel(queue.default_queue_name), b"")
    except _NUDGE_REFUSED as exc:
        log.warning("could not wake idle workers (%r): they read the queue within a second", exc)


def call_job_id(call_id: str) -> str:
    """The id of the call's one job; the job's argument stays the bare call id."""
    return CALL_JOB_PREFIX + call_id


# arq's client, by the name the API and the worker hold it (neither imports arq for it).
QueueClient = ArqRedis


def queue_client(pool: ConnectionPool) -> QueueClient:
    """arq's client over a pool the caller owns (and closes)."""
    return ArqRedis(connection_pool=pool)


def call_enqueuer(queue: QueueClient) -> Callable[[str], Awaitable[bool]]:
    """enqueue_process_call bound to the queue: what core's Ingestion calls to queue a job."""
    return partial(enqueue_process_call, queue)


async def enqueue_process_call(queue: ArqRedis, call_id: str) -> bool:
    """Queue the call's job; its id is the call's (call_job_id), so a second enqueue is a no-op.
    Returns False when the job was already queued or running."""
    return await _enqueue(queue, PROCESS_CALL, call_id, _job_id=call_job_id(call_id))


@dataclass(frozen=True, slots=True)
class QueueStatus:
    queued_jobs: int  # waiting in the queue, deferred retries included
    worker_heartbeat: str | None  # the last health line a worker wrote; None if none runs


async def queue_status(queue: ArqRedis) -> QueueStatus:
    name = queue.default_queue_name
    async with queue.pipeline(transaction=False) as pipe:
        pipe.zcard(name)
        pipe.get(name + health_check_key_suffix)
        queued, heartbeat = await pipe.execute()
    return QueueStatus(int(queued), heartbeat.decode() if heartbeat else None)


async def waiting_calls(queue: ArqRedis, call_ids: Sequence[str]) -> set[str]:
    """The calls among `call_ids` whose job waits in the queue, not running (no in-progress
    marker): a backlog, or a retry deferred during an outage. Such a job is not orphaned: a
    worker runs it in its turn. One round trip whatever their number (arq's queue also holds
    running jobs until they finish, so the marker tells the two apart)."""
    if not call_ids:
        return set()
    job_ids = [call_job_id(c) for c in call_ids]
    async with queue.pipeline(transaction=False) as pipe:
        pipe.zmscore(queue.default_queue_name, job_ids)
        pipe.mget([in_progress_key_prefix + j for j in job_ids])
        queued, running = await pipe.execute()
    return {
        call_id
        for call_id, score, marker in zip(call_ids, queued, running, strict=True)
        if score is not None and marker is None
    }


async def requeue_orphan(queue: ArqRedis, call_id: str) -> bool:
    """Make a call whose worker died runnable again. True if it was orphaned and now is
    runnable; False if its job was merely waiting in the queue (a backlog, or a retry deferred
    during an outage)."""
    job_id = call_job_id(call_id)
    if await queue.exists(job_key_prefix + job_id):
        # A job whose worker died keeps arq's in-progress marker until arq's own timeout;
        # removing it lets any worker pick the still-queued job up on its next poll.
        released = await queue.delete(in_progress_key_prefix + job_id)
        if await queue.zscore(queue.default_queue_name, job_id) is not None:
            if released:
                await wake_workers(queue)
            return bool(released)
        await queue.delete(job_key_prefix + job_id)  # arq gave up on it: start afresh
    return await enqueue_process_call(queue, call_id)


FLUSH_SEGMENT = "flush_segment"
# A segment flush's job id: the call's, its own kind, and the number of the segment the ingest
# script asked for, so one request is queued once and the next one is a job of its own.
SEGMENT_JOB_PREFIX = "segment:"


def segment_job_id(call_id: str, asked: int, again: int = 0) -> str:
    """`again`: the reaper's retry of a request whose job was lost or failed (a second
    enqueue under the first id would be a no-op while arq keeps that job's result)."""
    return f"{SEGMENT_JOB_PREFIX}{asked}.{again}:{call_id}"


async def enqueue_flush_segment(queue: ArqRedis, call_id: str, asked: int, again: int = 0) -> bool:
    """Queue a flush of the live call's unflushed tail (the ingest script asked for segment
    `asked`); False when that request was queued already."""
    job_id = segment_job_id(call_id, asked, again)
    return await _enqueue(queue, FLUSH_SEGMENT, call_id, _job_id=job_id)


TRANSCRIBE_LIVE = "transcribe_live"
LIVE_JOB_PREFIX = "live:"


async def enqueue_live_transcription(
    queue: ArqRedis, call_id: str, tag: int, follow_up: bool = False
) -> bool:
    """Queue a live call's transcription of the windows its stored segments made ready, after a
    segment flush stored one (`tag`: that flush's moment, telling one pass from the next)."""
    job_id = f"{LIVE_JOB_PREFIX}{tag}:{call_id}"
    return await _enqueue(queue, TRANSCRIBE_LIVE, call_id, follow_up, _job_id=job_id)


async def enqueue_follow_up(queue: ArqRedis, call_id: str, after_s: float, tag: int) -> bool:
    """Queue one more flush of the call's tail `after_s` from now, so that what a live window
    left after its last pause is stored and transcribed within seconds, not a segment later;
    `tag` tells one follow-up from another (the pass it follows)."""
    job_id = f"{SEGMENT_JOB_PREFIX}follow.{tag}:{call_id}"
    return await _enqueue(
        queue, FLUSH_SEGMENT, call_id, follow_up=True, _job_id=job_id, _defer_by=after_s
    )


def segment_enqueuer(queue: QueueClient) -> Callable[[str, int], Awaitable[bool]]:
    """enqueue_flush_segment bound to the queue: what core's Ingestion calls when a live call's
    tail is due."""
    return partial(enqueue_flush_segment, queue)


ERASE_CALL = "erase_call"
# An erasure's job id: its own kind, what it erases ("call" or "audio") and the call. arq keeps
# no result (WorkerSettings.keep_result = 0), so a finished erasure's id can be queued again.
ERASE_JOB_PREFIX = "erase:"


def erase_job_id(call_id: str, scope: str) -> str:
    return f"{ERASE_JOB_PREFIX}{scope}:{call_id}"


async def enqueue_erasure(
    queue: ArqRedis, call_id: str, scope: str, defer_s: float | None = None
) -> bool:
    """Queue the erasure of the call (scope "call") or of its recording (scope "audio"); one job
    per call and scope at a time (a second enqueue is a no-op). False if it was queued already."""
    return await _enqueue(
        queue, ERASE_CALL, call_id, scope, _job_id=erase_job_id(call_id, scope), _defer_by=defer_s
    )


async def call_job_pending(queue: ArqRedis, call_id: str) -> bool:
    """The call's processing job is queued or running (arq's job or in-progress key exists)."""
    job_id = call_job_id(call_id)
    return bool(await queue.exists(job_key_prefix + job_id, in_progress_key_prefix + job_id))


def in_progress_ttl_s(longest_job_timeout_s: float) -> float:
    """How long arq's in-progress marker of a job lives from the moment a worker takes the job:
    arq's Worker.in_progress_timeout_s, its longest job timeout + 10 s. It is never renewed."""
    return longest_job_timeout_s + 10


async def release_dead_erasure(
    queue: ArqRedis, call_id: str, scope: str, *, marker_ttl_s: float, job_timeout_s: float
) -> bool:
    """Make an erasure whose worker died mid-way runnable again, now rather than when arq's
    marker expires: a marker older than the job's timeout belongs to a dead worker (a live one
    would have finished the job or cancelled it by then). The job is still in the queue, so
    deleting the marker lets any worker take it. True if it was released."""
    key = in_progress_key_prefix + erase_job_id(call_id, scope)
    left_ms = await queue.pttl(key)
    if left_ms < 0:
        return False  # not running
    running_s = marker_ttl_s - left_ms / 1000
    if running_s <= job_timeout_s + 5:
        return False
    released = bool(await queue.delete(key))
    if released:
        await wake_workers(queue)
    return released
