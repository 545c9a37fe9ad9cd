"""Periodic duties: complete calls that went quiet, and recover calls whose worker died."""

from __future__ import annotations

import logging
import time

from core import metrics
from core.audit import audit
from core.logs import about
from db import calls
from db.intake import Completion
from db.job_failures import RERUNS, JobFailures, segment_asks
from db.outages import is_outage
from db.states import TERMINAL_STATES
from jobs.flushing import fail_for_good
from jobs.process import release_if_settled
from jobs.queue import enqueue_flush_segment, requeue_orphan, waiting_calls
from jobs.resources import WorkerResources

log = logging.getLogger(__name__)
IDLE_SWEEP = "idle-sweep"  # who the audit trail says completed the calls that went quiet
REAPER = "reaper"  # who it says completed a call whose segment flushes were never done
# A segment flush asked for this long ago and not done is asked for again: far above a flush's
# time (one transaction of a segment), so only a lost or failed one is. Each request after that
# waits twice as long as the one before, up to SEGMENT_BACKOFF_MAX_S, and SEGMENT_FLUSH_MAX_ASKS
# requests end the call: a store that is down costs a request per call every few minutes, not a
# job every REAPER_INTERVAL_S.
SEGMENT_GRACE_S = 30.0
SEGMENT_BACKOFF_MAX_S = 300.0
# The completion reason of a live call whose segment flushes are never done (its history says it).
SEGMENT_FLUSH_FAILED = "segment_flush_failed"


async def complete_idle_calls(res: WorkerResources, actor: str | None = IDLE_SWEEP) -> list[str]:
    """Complete every call with no packet for CALL_IDLE_TIMEOUT_S, through the exactly-once path
    (which audits each completion as the `actor`'s)."""
    cutoff = time.time() - res.settings.call_idle_timeout_s
    completed = []
    for call_id in await res.live.idle(cutoff):
        outcome = await res.ingestion.complete(call_id, "idle", cutoff, actor=actor)
        if outcome is Completion.COMPLETED:
            completed.append(call_id)
    if completed:
        log.info("idle sweep completed %d calls", len(completed))
    return completed


MAX_LENGTH = "max_length"  # the completion reason of a call that reached MAX_CALL_SECONDS


async def complete_overlong_calls(
    res: WorkerResources, actor: str | None = IDLE_SWEEP
) -> list[str]:
    """Complete every live call whose first packet came MAX_CALL_SECONDS ago or more, through
    the same exactly-once path as an idle one, with the reason `max_length` in its history."""
    cutoff = time.time() - res.settings.max_call_seconds
    completed = []
    for call_id in await res.live.started_before(cutoff):
        if await res.ingestion.complete(call_id, MAX_LENGTH, actor=actor) is Completion.COMPLETED:
            completed.append(call_id)
    if completed:
        log.warning("sweep completed %d calls at MAX_CALL_SECONDS", len(completed))
    return completed


async def recover_orphaned_calls(res: WorkerResources) -> list[str]:
    """Re-run every completed call that no live worker holds: its worker died, its job was lost
    between the completion and the enqueue, or it ran out of arq tries during an outage.
    Candidates come from Redis (completed, not yet final) and from PostgreSQL (flushed calls in
    a worker state), so a call is found even if Redis lost its index entry.

    Under a backlog most candidates are not orphans: their job waits in the queue, or runs on a
    live worker (WORKER_MAX_JOBS at once, each longer than the lease's grace). Those are left in
    two round trips for all, before anything is read one call at a time: checked one by one,
    each cost a lease check, a PostgreSQL read and a release, and a round of 1,000 took longer
    than REAPER_INTERVAL_S (BENCHMARKS.md, issue 27)."""
    grace = res.settings.lease_ttl_s
    pending = await res.live.pending(completed_before=time.time() - grace)
    async with res.sessions() as session:
        stalled = await calls.stalled_calls(session, idle_for_s=grace)
    candidates = list(dict.fromkeys([*pending, *stalled]))
    waiting = await waiting_calls(res.queue, candidates)
    candidates = [c for c in candidates if c not in waiting]
    held = await res.leases.alive_among(candidates)
    recovered = []
    for call_id in candidates:
        if call_id in held:
            continue
        if await release_if_settled(res, call_id) in TERMINAL_STATES:
            continue
        if await _run_again_or_fail(res, call_id):
            recovered.append(call_id)
    metrics.LEASE_RECOVERIES.inc(len(recovered))
    if recovered:
        log.warning("reaper re-ran %d orphaned calls: %s", len(recovered), recovered[:10])
    await _ask_segments_again(res)
    return recovered


async def _run_again_or_fail(res: WorkerResources, call_id: str) -> bool:
    """Run the call's job again, unless the reaper did so CALL_MAX_RERUNS times already (its job
    fails, or kills its worker, whatever the cause): then end the call FAILED, naming the last
    error. The count is per call, in Redis (db/job_failures.py), so a worker's restart does not
    reset it; an outage does not add to it (a job waits for one within its run: jobs/worker.py).
    True if the job was made runnable again."""
    failures = JobFailures(res.redis)
    found = await failures.read(call_id)
    reruns = found.count(RERUNS)
    if reruns >= res.settings.call_max_reruns:
        # No error kept: its worker died, or arq cancelled it past JOB_TIMEOUT_S.
        why = found.last_error or "its worker stopped, or it ran past JOB_TIMEOUT_S, each time"
        reason = f"its job ran {reruns + 1} times and never finished ({why})"
        await _end_failed(res, call_id, reason)
        return False
    if await requeue_orphan(res.queue, call_id):
        await failures.count(call_id, RERUNS)
        return True
    return False


async def _end_failed(res: WorkerResources, call_id: str, reason: str) -> None:
    """FAILED for good with `reason` (a replay runs it again), released with its final event; a
    tail PostgreSQL does not hold stays in Redis for the retention, for that replay. PostgreSQL
    down: logged, and the reaper meets the call again on its next round."""
    try:
        live = await res.live.get(call_id, res.settings.missing_list_cap)
        await fail_for_good(res, call_id, reason, live)
        await release_if_settled(res, call_id)
    except Exception as exc:
        # Never the reaper's end: its other calls wait on this round. It tries again next round.
        if not is_outage(exc):
            log.exception("%s: could not end the call FAILED", call_id, extra=about(call_id))
        else:
            log.warning(
                "%s: could not end the call FAILED (%r)", call_id, exc, extra=about(call_id)
            )
        return
    await JobFailures(res.redis).forget(call_id)
    log.error("%s: FAILED by the reaper: %s", call_id, reason, extra=about(call_id))


async def _ask_segments_again(res: WorkerResources) -> None:
    """Queue again the segment flushes asked for long ago and still not done (the enqueue was
    lost, the job failed or its worker died): a live call's tail stays about a segment long."""
    now = time.time()
    stale = await res.live.segments_due(asked_before=now - SEGMENT_GRACE_S)
    for call_id in stale:
        await _ask_segment_again(res, call_id, now)
    if stale:
        log.warning("reaper asked again for %d segment flushes", len(stale))


def segment_backoff_s(asks: int) -> float:
    """How long after its `asks`-th request again a segment flush not done is asked for again."""
    return min(SEGMENT_BACKOFF_MAX_S, SEGMENT_GRACE_S * 2.0 ** min(asks - 1, 16))


async def _ask_segment_again(res: WorkerResources, call_id: str, now: float) -> None:
    """One more request for the flush of the call's current segment, under a job id of its own
    (the segment's number and the request's), then a wait that doubles; past
    SEGMENT_FLUSH_MAX_ASKS requests the call is completed and ends FAILED, naming the last error:
    its tail would otherwise grow in Redis for as long as it goes on."""
    request = await res.live.segment_request(call_id)
    if request is None or request.completed:
        # Released meanwhile, or ended: the call's own job flushes its tail, under its own bound.
        await res.live.drop_segment(call_id)
        return
    segment, asked_at = request.segment, request.asked_at
    if asked_at is None:  # done meanwhile (which took it out of the index)
        return
    failures = JobFailures(res.redis)
    asks = await failures.count(call_id, segment_asks(segment))
    if asks > res.settings.segment_flush_max_asks:
        await res.live.drop_segment(call_id)
        await _end_live_call_failed(res, call_id, segment, asks - 1, asked_at, now)
        return
    # The entry's score is the time a request was asked: due again SEGMENT_GRACE_S after it.
    await res.live.defer_segment(call_id, now + segment_backoff_s(asks) - SEGMENT_GRACE_S)
    await enqueue_flush_segment(res.queue, call_id, segment, again=asks)


async def _end_live_call_failed(
    res: WorkerResources,
    call_id: str,
    segment: int,
    asks: int,
    asked_at: float,
    now: float,
) -> None:
    """Complete the call (no packet is taken after this; its job is not queued: the call is
    ended here) and end it FAILED with why."""
    completed = await res.ingestion.intake.complete(call_id, SEGMENT_FLUSH_FAILED)
    if completed is Completion.COMPLETED:
        metrics.count_completion(SEGMENT_FLUSH_FAILED)
        audit("complete", call_id, REAPER)
    error = (await JobFailures(res.redis).read(call_id)).last_error or "no job ran it"
    reason = (
        f"the flush of its segment {segment} was asked for again {asks} times over "
        f"{now - asked_at:.0f} s and never "
        f"done ({error}); the call was ended so that its unstored audio stops growing"
    )
    await _end_failed(res, call_id, reason)
