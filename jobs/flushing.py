"""Bringing a completed call into PostgreSQL for the worker: its last segment of audio (the
earlier ones were flushed while it went on, jobs/segments.py), then its row, claimed. Four cases:

- new: Redis knows the call and PostgreSQL has no row: the row is created, claimed (one
  statement);
- re-run: the row exists (an earlier run flushed it, or a dead letter was replayed while Redis
  still held the call): it is claimed again;
- refused: PostgreSQL refuses the call's data (a client's metadata it cannot hold, a counter past
  its column), or the object store refuses its audio (no such bucket, access denied, a key it
  will not take: db/outages.store_refusal): the call ends FAILED at once (a refusal would only
  come again on every re-run), with a row of what could be kept; what was not stored stays in
  Redis for the key retention (db/lua/release.lua keeps a tail that is not empty), so a replay
  once the store is mended stores it and loses nothing;
- gone from Redis: a re-run or a replay after the release: the row, if any, is claimed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from core.logs import about
from db import calls, worker_writes
from db.events import state_event
from db.outages import postgres_refusal, store_refusal
from db.record import CallRecord
from db.segments import SegmentHead
from db.states import CallState
from db.worker_writes import Claim
from jobs.attempts import LeaseLost
from jobs.resources import WorkerResources
from jobs.segments import FIRST_PAGE, flush_tail

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Held:
    """A call this worker has flushed (or found flushed) and claimed. `heads`: when this run
    stored every segment of the call and created its row (a call whose whole audio its final
    flush stored: a short one), those segments' heads: no live pass ever ran for it or will (a
    live pass follows a segment a live flush stored, jobs/segments.py), and nothing of it is
    transcribed yet."""

    claim: Claim
    heads: list[SegmentHead] | None = None


class Refused(Exception):
    """PostgreSQL or the object store refused a write of the call's data (not an outage):
    permanent for the call, until an operator mends the store and replays it."""

    def __init__(self, what: str, reason: str, by: str = "PostgreSQL") -> None:
        super().__init__(f"{by} refused {what}: {reason}")


async def refusing(what: str, write: Awaitable[T]) -> T:
    """Await a write; a refusal (db.outages.postgres_refusal, store_refusal) becomes Refused,
    naming `what`; an outage stays what it is (the job is retried for it)."""
    try:
        return await write
    except Exception as exc:
        refused = postgres_refusal(exc)
        if refused is not None:
            raise Refused(what, refused) from exc
        refused = store_refusal(exc)
        if refused is not None:
            raise Refused(what, refused, by="the object store") from exc
        raise


async def flush_call(res: WorkerResources, call_id: str, holder: str) -> Held | None:
    """Take the call's lease, store what is left of its audio, then its row, claimed, and tell
    the feed it is PROCESSING_AI. None if it is not the worker's to take (already ARCHIVED or
    FAILED, or unknown), or if PostgreSQL refused the call's data: the call is FAILED then, for
    good."""
    s = res.settings
    start = await res.flush.start(call_id, holder, s.lease_ttl_s, FIRST_PAGE)
    if not start.meta:
        claimed = await _claim_flushed(res, call_id)  # gone from Redis
        if claimed is not None:
            await res.events.publish(_picked_up(call_id))
        return claimed
    live = await res.live.record(call_id, start.meta, start.metadata, s.missing_list_cap)
    held: Held | None = None
    try:
        flushed = await refusing(
            "the call's audio",
            flush_tail(
                res,
                call_id,
                live.metadata,
                (start.first_page, start.more),
                live.state.value,
                hold_last=True,
                none_trimmed=b"seg_trimmed" not in start.meta,
            ),
        )
    except Refused as refused:
        # Audio refused is audio the call's results would lack: FAILED, row or not.
        await fail_for_good(res, call_id, str(refused), live)  # refused
        return None
    try:
        held = await refusing("the call's record", _flush_new(res, live, flushed.heads))  # new
    except Refused as refused:
        # A re-run's or a replay's row exists: a record refused again changes nothing.
        if not await _row_exists(res, call_id):
            await res.flush.segment_done(call_id, flushed.through, flushed.events)
            await fail_for_good(res, call_id, str(refused), live)  # refused
            return None
    if held is None:
        held = await _claim_flushed(res, call_id)  # re-run
    # One step in Redis: the last segment's entries trimmed, the call out of the unflushed
    # index (PostgreSQL has its row: the listing reads it from there), the feed told.
    told = [*flushed.events, *([] if held is None else [_picked_up(call_id)])]
    await res.flush.segment_done(call_id, flushed.through, told, row_stored=True)
    return held


def _picked_up(call_id: str) -> dict[str, Any]:
    return state_event(call_id, CallState.PROCESSING_AI.value)


async def fail_for_good(
    res: WorkerResources, call_id: str, reason: str, live: CallRecord | None
) -> None:
    """End a call FAILED with `reason`, whether PostgreSQL holds its row yet or not (`live`: what
    Redis holds of it, None if nothing): a refusal, or a bound reached (jobs/sweep.py: a segment
    flush asked for too often, a job run too often). A replay runs it again. Nothing if it is
    ARCHIVED or FAILED already, or unknown."""
    if live is not None:
        await _fail_unflushed(res, live, reason)
    else:
        held = await _claim_flushed(res, call_id)
        if held is not None:
            await fail_held(res, held.claim, reason)
    await res.flush.forget_unflushed(call_id)


async def _row_exists(res: WorkerResources, call_id: str) -> bool:
    async with res.reads() as session:
        return await calls.get_call(session, call_id) is not None


async def _flush_new(
    res: WorkerResources, live: CallRecord, heads: list[SegmentHead] | None
) -> Held | None:
    """The first flush of a call's row, claimed by this worker; None if the row exists.
    `heads`: of every segment of the call, if this run stored them all."""
    claim = await worker_writes.flush_new_call(res.autocommit, live, webhooks=res.webhooks)
    return Held(claim, heads) if claim else None


async def _fail_unflushed(res: WorkerResources, live: CallRecord, reason: str) -> None:
    """End a call whose data PostgreSQL refused where everyone can see it: a FAILED row with
    what Redis knew of it, in a statement of its own. If the row exists (an earlier run flushed
    the call, or failed it so and it was replayed), fail that one."""
    try:
        written = await refusing("the call's record", _write_failed_row(res, live, reason))
    except Refused:
        # The record itself holds what PostgreSQL refuses (a client's metadata, a counter past
        # its column's range): keep the row without it rather than no row at all.
        reason = f"{reason}; its record was refused too: kept without metadata, counters capped"
        written = await _write_failed_row(res, worker_writes.storable(live), reason)
    if written:
        log.error("%s: FAILED for good: %s", live.call_id, reason, extra=about(live.call_id))
        return
    held = await _claim_flushed(res, live.call_id)
    if held is not None:
        await fail_held(res, held.claim, reason)


async def _write_failed_row(res: WorkerResources, live: CallRecord, reason: str) -> bool:
    async with res.autocommit.connect() as conn:
        return await worker_writes.fail_new_call(conn, live, reason, webhooks=res.webhooks)


async def fail_held(res: WorkerResources, claim: Claim, reason: str) -> None:
    """FAILED for good with `reason`, fenced by the claim. Nothing of the run goes with it (its
    unsaved attempts, a transcript, a sentiment): any of them may be what was refused."""
    failed = await worker_writes.finish(
        res.autocommit, claim, CallState.FAILED, reason, [], last_error=reason,
        webhooks=res.webhooks,
    )  # fmt: skip
    if not failed:
        raise LeaseLost(claim.call_id)
    log.error("%s: FAILED for good: %s", claim.call_id, reason, extra=about(claim.call_id))


async def _claim_flushed(res: WorkerResources, call_id: str) -> Held | None:
    """A call an earlier run flushed: claim it again (a re-run, or a replayed dead letter)."""
    async with res.sessions() as session, session.begin():
        claim = await calls.claim(session, call_id)
        if claim is None:
            return None
        if claim.state is CallState.COMPLETED:  # a replayed dead letter
            moved = await calls.transition(
                session, call_id, CallState.PROCESSING_AI, "worker picked the call up",
                epoch=claim.epoch,
            )  # fmt: skip
            if not moved:
                raise LeaseLost(call_id)
    return Held(claim)
