"""Periodic duties: complete calls that went quiet, and recover calls whose worker died."""

from __future__ import annotations

import logging
import time

from core import metrics
from db import calls
from db.intake import Completion
from db.states import TERMINAL_STATES
from jobs.process import release_if_settled
from jobs.queue import enqueue_flush_segment, requeue_orphan
from jobs.resources import WorkerResources

log = logging.getLogger(__name__)
IDLE_SWEEP = "idle-sweep"
# A segment flush asked for this long ago and not done is asked for again: far above a flush's
# time (one transaction of a segment), so only a lost or failed one is.
SEGMENT_GRACE_S = 30.0  # who the audit trail says completed the calls that went quiet


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
    a worker state), so a call is found even if Redis lost its index entry."""
    grace = res.settings.lease_ttl_s
    pending = await res.live.pending(completed_before=time.time() - grace)
    async with res.sessions() as session:
        stalled = await calls.stalled_calls(session, idle_for_s=grace)
    recovered = []
    for call_id in dict.fromkeys([*pending, *stalled]):
        if await res.leases.alive(call_id):
            continue
        if await release_if_settled(res, call_id) in TERMINAL_STATES:
            continue
        if await requeue_orphan(res.queue, call_id):
            recovered.append(call_id)
    metrics.LEASE_RECOVERIES.inc(len(recovered))
    if recovered:
        log.warning("reaper re-ran %d orphaned calls: %s", len(recovered), recovered[:10])
    await _ask_segments_again(res)
    return recovered


async def _ask_segments_again(res: WorkerResources) -> None:
    """Queue again the segment flushes asked for long ago and still not done (the enqueue was
    lost, the job failed or its worker died): a live call's tail stays about a segment long."""
    now = time.time()
    stale = await res.live.segments_due(asked_before=now - SEGMENT_GRACE_S)
    for call_id in stale:
        await enqueue_flush_segment(res.queue, call_id, 0, again=int(now))
    if stale:
        log.warning("reaper asked again for %d segment flushes", len(stale))
