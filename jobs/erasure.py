"""The one erasure path: what a DELETE /v1/calls/{id}, retention and a ledger replay all run.

An erasure of a call (scope `call`): a live call is completed first (through the exactly-once
completion, audited as the asker's) and its done marker becomes a tombstone, so packets for the
id stay refused; while a worker still works on the call (its lease, its transcription lock, its
job queued or running, a state a worker owns) the erasure waits (CallBusy: the job is retried a
bounded number of times, and the upkeep queues it again after that). Then everything goes, each
step idempotent so that a re-run after a crash finishes it: the objects in the store (found by
their prefix), every PostgreSQL row (one transaction), the Redis keys and the call's events in
the live feed; the ledger's row is marked finished last.

An erasure of a recording (scope `audio`, AUDIO_RETENTION_DAYS): the objects and the segment
rows go, the call keeps its transcript and figures and says `audio_erased_at`.

The upkeep (a cron of the workers) applies retention in bounded batches through the same path,
and queues again every erasure the ledger says is unfinished (a job lost, a worker killed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from core import erasure
from core.logs import about
from db import calls, erasures
from db.erasures import Reason, Scope
from db.forget import CallRedis
from db.states import WORKER_STATES, CallState
from jobs.queue import (
    call_job_pending,
    enqueue_erasure,
    in_progress_ttl_s,
    release_dead_erasure,
)
from jobs.resources import WorkerResources

log = logging.getLogger(__name__)
PENDING_BATCH = 500  # unfinished erasures queued again per upkeep run
# An erasure's job is cancelled past this (deleting a call takes seconds): far shorter than a
# call's job, so that the upkeep soon tells an erasure whose worker died from a running one.
ERASE_TIMEOUT_S = 120


class CallBusy(Exception):
    """A worker still works on the call: the erasure waits for it to finish."""


async def erase(res: WorkerResources, call_id: str, scope: Scope) -> bool:
    """Run the erasure the ledger holds for (call_id, scope) to its end. Returns False when the
    ledger holds none (nothing was asked for); raises CallBusy while a worker works on the call."""
    async with res.sessions() as session:
        entry = await erasures.find(session, call_id, scope)
    if entry is None:
        log.warning("%s: no erasure of its %s was asked for; nothing done", call_id, scope)
        return False
    if entry.erased_at is not None:
        return True
    redis = CallRedis(res.redis)
    if scope is Scope.CALL:  # done when it was asked for; again, in case that was cut short
        await erasure.stop_call(res.ingestion, res.redis, call_id, entry.requested_by)
    if await _worked_on(res, redis, call_id):
        raise CallBusy(call_id)
    if res.objects is not None:
        await res.objects.delete_call(call_id)
    events_from_ms, events_to_ms = await _event_bounds(res, call_id)
    now = datetime.now(UTC)
    async with res.engine.begin() as conn:
        if scope is Scope.CALL:
            rows = await erasures.delete_call_rows(conn, call_id)
        else:
            rows = await erasures.delete_audio_rows(conn, call_id, now)
    if scope is Scope.CALL:
        await redis.forget(call_id)
        events = await redis.forget_events(call_id, events_from_ms, events_to_ms)
    async with res.sessions() as session, session.begin():
        await erasures.finish(session, call_id, scope, now)
    what = f"{rows} rows" + (f", {events} feed events" if scope is Scope.CALL else "")
    log.info("%s: %s erased (%s)", call_id, scope, what, extra=about(call_id))
    return True


# The feed's events of a call lie between its start and shortly after its final state (its
# final events go out with its release, which the erasure waited for); the margins are wide.
EVENTS_BEFORE_S = 60
EVENTS_AFTER_S = 3600


async def _event_bounds(res: WorkerResources, call_id: str) -> tuple[int | None, int | None]:
    """Where the call's events lie in the feed, in epoch ms, from its row; (None, None) (the
    whole feed) without one: a live call never flushed, or a re-run after its rows went."""
    async with res.sessions() as session:
        row = await calls.get_call(session, call_id)
    if row is None:
        return None, None
    first = int((row.created_at.timestamp() - EVENTS_BEFORE_S) * 1000)
    if row.finished_at is None:
        return first, None
    return first, int((row.finished_at.timestamp() + EVENTS_AFTER_S) * 1000)


async def _worked_on(res: WorkerResources, redis: CallRedis, call_id: str) -> bool:
    """A worker holds the call, its job is queued or running, or it is completed and not yet
    final (in Redis' pending index, or a state a worker owns in PostgreSQL): its job is on its
    way, the reaper sees to that."""
    if await redis.busy(call_id) or await call_job_pending(res.queue, call_id):
        return True
    async with res.sessions() as session:
        row = await calls.get_call(session, call_id)
    return row is not None and CallState(row.state) in WORKER_STATES


@dataclass(frozen=True, slots=True)
class UpkeepRun:
    due_calls: int  # calls retention asked to erase in this run
    due_recordings: int  # recordings retention asked to erase
    requeued: int  # unfinished erasures queued again


async def upkeep(res: WorkerResources, now: datetime | None = None) -> UpkeepRun:
    """Retention (RETENTION_DAYS, AUDIO_RETENTION_DAYS; off by default), a bounded batch
    (RETENTION_BATCH) of each per run, then every unfinished erasure queued again: a no-op for
    one whose job is queued or running, and the job of one whose worker died mid-way made
    runnable again (release_dead_erasure)."""
    now = now or datetime.now(UTC)
    s = res.settings
    enqueue = partial(enqueue_erasure, res.queue)
    asked = {Scope.CALL: 0, Scope.AUDIO: 0}
    for scope, days in ((Scope.CALL, s.retention_days), (Scope.AUDIO, s.audio_retention_days)):
        if days is None:
            continue
        async with res.sessions() as session:
            due = await erasures.due(session, scope, now - timedelta(days=days), s.retention_batch)
        for call_id in due:
            await erasure.ask(
                res.sessions,
                enqueue,
                res.ingestion,
                res.redis,
                call_id,
                scope,
                Reason.RETENTION,
                erasure.RETENTION_ACTOR,
            )
        asked[scope] = len(due)
    async with res.sessions() as session:
        unfinished = await erasures.pending(session, now, PENDING_BATCH)
    marker_ttl_s = in_progress_ttl_s(max(s.job_timeout_s, ERASE_TIMEOUT_S))
    requeued = 0
    for entry in unfinished:
        released = await release_dead_erasure(
            res.queue,
            entry.call_id,
            entry.scope.value,
            marker_ttl_s=marker_ttl_s,
            job_timeout_s=ERASE_TIMEOUT_S,
        )
        if not (released or await enqueue(entry.call_id, entry.scope.value)):
            continue  # queued or running already: not another try
        requeued += 1
        async with res.sessions() as session, session.begin():
            count = await erasures.requeued(session, entry.call_id, entry.scope)
        if count >= erasures.MAX_REQUEUES:
            log.error(
                "erasure of call %s (%s) queued again %d times and never finished: left "
                "unfinished in the ledger; DELETE it again to retry",
                entry.call_id,
                entry.scope.value,
                count,
                extra=about(entry.call_id),
            )
    if any(asked.values()) or requeued:
        log.info(
            "erasure upkeep: retention asked for %d calls and %d recordings; %d unfinished "
            "erasures queued again",
            asked[Scope.CALL],
            asked[Scope.AUDIO],
            requeued,
        )
    return UpkeepRun(asked[Scope.CALL], asked[Scope.AUDIO], requeued)
