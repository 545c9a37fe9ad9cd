"""arq's entry point: `arq jobs.worker.WorkerSettings`. The composition root of the worker."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any, ClassVar

import uvloop
from arq import Retry, cron
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Function, func

from core import metrics
from core.builders import feed_limits
from core.heap import settle_heap
from core.logs import about, configure_logging
from db.erasures import Scope
from db.feed_relay import FeedRelay
from db.job_failures import JobFailures
from db.outages import is_outage, postgres_refusal, store_refusal
from db.redis_client import is_cluster
from jobs import polling, resilience
from jobs.ai_local import LocalAI
from jobs.erasure import ERASE_TIMEOUT_S, CallBusy, erase, upkeep
from jobs.feed_relay import RelayLoop
from jobs.process import process_call
from jobs.queue import ERASE_CALL, FLUSH_SEGMENT, PROCESS_CALL, TRANSCRIBE_LIVE
from jobs.resources import WorkerResources, make_resources, resources
from jobs.segments import flush_segment
from jobs.sweep import complete_idle_calls, complete_overlong_calls, recover_orphaned_calls
from jobs.transcription import live_pass
from jobs.webhooks import DeliveryLoop
from settings import get_settings

log = logging.getLogger(__name__)


def outage_backoff_s(job_try: int, cap_s: float) -> float:
    return float(min(cap_s, 0.5 * 2 ** min(job_try, 10)) * random.uniform(0.5, 1.0))


# A segment flush job's tries: with outage_backoff_s's waits (1, 2, 4, ... 30 s) about two
# minutes of an outage; the reaper then asks again for the segment, a bounded number of times
# (jobs/sweep.py), so a segment's flush is bounded by time, and so is a call's.
SEGMENT_JOB_TRIES = 8
LIVE_JOB_TRIES = 3  # a live pass is best effort: the call's final run transcribes what is left


def what_failed(exc: BaseException) -> str:
    """An error in words for a call's FAILED reason: what a store refused (db/outages.py's words),
    or the error's type and where it was raised in Callstream's code; never its message (which
    may quote the call's data)."""
    refused = store_refusal(exc)
    if refused is not None:
        return f"the object store refused it: {refused}"
    refused = postgres_refusal(exc)
    if refused is not None:
        return f"PostgreSQL refused it: {refused}"
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "site-packages" not in f.filename]
    where = ""
    if ours:
        frame = ours[-1]
        where = f" at {Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno}"
    return f"{type(exc).__name__}{where}"


async def process_call_job(ctx: dict[str, Any], call_id: str) -> str:
    res = resources(ctx)
    started = time.monotonic()
    try:
        state = await process_call(res, call_id)
    except Exception as exc:
        # A dependency that is down: wait and retry the job, never fail the call for it.
        if is_outage(exc):
            raise _retry_later(ctx, res.settings.db_retry_max_s, call_id, exc) from exc
        # Anything else fails the job; the reaper runs it again, CALL_MAX_RERUNS times at most,
        # then ends the call FAILED with this error (jobs/sweep.py).
        await _note_failure(res, call_id, exc)
        raise
    # A finished call's re-run count went with its release (db/lua/release.lua): a replay
    # starts with none counted.
    took = time.monotonic() - started
    log.info("call %s: %s after %.1fs", call_id, state, took, extra=about(call_id))
    return state


async def _note_failure(res: WorkerResources, call_id: str, exc: Exception) -> None:
    try:
        await JobFailures(res.redis).note_error(call_id, what_failed(exc))
    except Exception as lost:  # the job's own error is the one to report
        log.warning("%s: could not keep the job's error (%r)", call_id, lost, extra=about(call_id))


def _retry_later(ctx: dict[str, Any], cap_s: float, call_id: str, exc: Exception) -> Retry:
    defer = outage_backoff_s(int(ctx.get("job_try", 1)), cap_s)
    metrics.JOB_RETRIES.inc()
    why = "%s: dependency unavailable (%r); retrying in %.1fs"
    log.warning(why, call_id, exc, defer, extra=about(call_id))
    return Retry(defer=defer)


async def flush_segment_job(ctx: dict[str, Any], call_id: str, follow_up: bool = False) -> int:
    """A live call's unflushed tail into PostgreSQL (jobs/segments.py); returns its packets."""
    res = resources(ctx)
    try:
        flushed = await flush_segment(res, call_id, follow_up)
    except Exception as exc:
        if is_outage(exc):
            await _note_failure(res, call_id, exc)  # named if the reaper's requests run out
            raise _retry_later(ctx, res.settings.db_retry_max_s, call_id, exc) from exc
        await _note_failure(res, call_id, exc)
        raise
    return flushed.packets


async def transcribe_live_job(ctx: dict[str, Any], call_id: str, follow_up: bool = False) -> int:
    """A live call's windows that its stored segments made ready (jobs/transcription.py);
    returns how many were stored. An outage defers it; a live pass is best effort (the call's
    final run transcribes whatever is left), so its tries are few."""
    res = resources(ctx)
    try:
        return (await live_pass(res, call_id, follow_up)).stored
    except Exception as exc:
        if is_outage(exc):
            raise _retry_later(ctx, res.settings.db_retry_max_s, call_id, exc) from exc
        raise


# While a worker still works on a call being erased, its erasure waits this long between tries;
# with ERASE_MAX_TRIES, about ten minutes (a call's AI work is bounded by time, far below). Past
# them the job fails, its ledger row stays unfinished, and the upkeep queues it again.
ERASE_BUSY_DEFER_S = 2.0
ERASE_MAX_TRIES = 300


async def erase_call_job(ctx: dict[str, Any], call_id: str, scope: str) -> bool:
    """One erasure (jobs/erasure.py), to its end."""
    res = resources(ctx)
    try:
        return await erase(res, call_id, Scope(scope))
    except CallBusy:
        raise Retry(defer=ERASE_BUSY_DEFER_S) from None
    except Exception as exc:
        if is_outage(exc):
            raise _retry_later(ctx, res.settings.db_retry_max_s, call_id, exc) from exc
        raise


async def erasure_upkeep(ctx: dict[str, Any]) -> int:
    """Retention, and every unfinished erasure queued again (jobs/erasure.py's upkeep)."""
    done = await upkeep(resources(ctx))
    return done.due_calls + done.due_recordings + done.requeued


async def sweep_idle_calls(ctx: dict[str, Any]) -> int:
    """Complete the calls that went quiet, and the live ones that reached MAX_CALL_SECONDS."""
    res = resources(ctx)
    return len(await complete_idle_calls(res)) + len(await complete_overlong_calls(res))


async def reap_orphaned_calls(ctx: dict[str, Any]) -> int:
    return len(await recover_orphaned_calls(resources(ctx)))


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.worker_nice:
        # On a machine shared with the API, ingestion's latency matters more than the drain's
        # pace: the scheduler gives the API the CPU first (make bench: open loop, draining).
        os.nice(settings.worker_nice)
    # arq's CLI gives it a handler of its own; in JSON mode configure_logging took it over.
    logging.getLogger("arq").propagate = settings.log_format == "json"
    res = ctx["resources"] = make_resources(settings)
    if isinstance(res.ai, LocalAI):
        await res.ai.start()  # the model loaded before the first call, not during it
    if is_cluster(res.redis):
        # On a cluster the call's events wait in their shards' outboxes for the relay.
        relay = ctx["feed_relay"] = RelayLoop(FeedRelay(res.redis, feed_limits(settings)))
        relay.start()
    if settings.webhook_secret.get_secret_value():
        # Also without WEBHOOK_URLS: rows written before it was emptied are still delivered.
        delivery = ctx["webhook_delivery"] = DeliveryLoop(res)
        delivery.start()
    queue = ctx["redis"]
    wake = ctx[polling.WAKE_CTX_KEY] = polling.QueueWake(queue, queue.default_queue_name)
    wake.start()
    settle_heap()


async def shutdown(ctx: dict[str, Any]) -> None:
    wake = ctx.get(polling.WAKE_CTX_KEY)
    if isinstance(wake, polling.QueueWake):
        await wake.stop()
    relay = ctx.get("feed_relay")
    if isinstance(relay, RelayLoop):
        await relay.stop()
    delivery = ctx.get("webhook_delivery")
    if isinstance(delivery, DeliveryLoop):
        await delivery.stop()
    res = ctx.get("resources")
    if res is not None:
        log.info("worker stopping: %s", resources(ctx).stages.summary())
        await resources(ctx).close()


def _every(seconds: int) -> set[int]:
    return set(range(0, 60, seconds))


def make_functions(job_timeout_s: int) -> list[Function]:
    # max_tries is generous: outages end in Retry, and the reaper covers what arq gives up on.
    return [
        func(process_call_job, name=PROCESS_CALL, timeout=job_timeout_s, max_tries=1000),
        # A segment that cannot be flushed is not lost: the call's final flush stores it.
        func(
            flush_segment_job,
            name=FLUSH_SEGMENT,
            timeout=job_timeout_s,
            max_tries=SEGMENT_JOB_TRIES,
        ),
        func(
            transcribe_live_job,
            name=TRANSCRIBE_LIVE,
            timeout=job_timeout_s,
            max_tries=LIVE_JOB_TRIES,
        ),
        func(erase_call_job, name=ERASE_CALL, timeout=ERASE_TIMEOUT_S, max_tries=ERASE_MAX_TRIES),
    ]


def make_cron_jobs(sweep_interval_s: int, reaper_interval_s: int) -> list[CronJob]:
    return [
        cron(sweep_idle_calls, second=_every(sweep_interval_s), run_at_startup=True, timeout=60),
        cron(
            reap_orphaned_calls, second=_every(reaper_interval_s), run_at_startup=True, timeout=60
        ),
        # At startup too: an erasure a killed worker left unfinished is queued again at once.
        cron(erasure_upkeep, second={30}, run_at_startup=True, timeout=300),
    ]


def _under_arq_cli() -> bool:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return Path(sys.argv[0]).name == "arq" or (spec is not None and spec.name == "arq.__main__")


if _under_arq_cli():
    # arq's CLI builds its Worker on asyncio.get_event_loop() and has no setting for the loop;
    # this composition root is the one place it imports before, so the policy is chosen here.
    # uvloop cuts the worker's CPU per call by about a quarter (make bench). Tests and other
    # importers keep their own loop.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
resilience.install()
polling.install()
_settings = get_settings()


class WorkerSettings:
    functions: ClassVar[list[Function]] = make_functions(_settings.job_timeout_s)
    cron_jobs: ClassVar[list[CronJob]] = make_cron_jobs(
        _settings.sweep_interval_s, _settings.reaper_interval_s
    )
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(_settings.queue_url)
    max_jobs = _settings.worker_max_jobs
    job_timeout = _settings.job_timeout_s
    # PostgreSQL is the record; arq results would only pin job ids and block replays.
    keep_result = 0
    # On SIGTERM stop taking jobs and let running ones finish for this long before cancelling.
    job_completion_wait = _settings.shutdown_grace_s
    # With jobs due or running, a poll every 50 ms (one ZRANGEBYSCORE); an idle worker waits for
    # a wake instead (jobs/polling.py's QueueWake), so a queued call starts within a round trip.
    poll_delay = 0.05
    health_check_interval = 10
