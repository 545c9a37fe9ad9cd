"""Bringing a completed call into PostgreSQL for the worker: its first flush (which claims it),
or a re-run's claim of a call flushed before; and a call whose data PostgreSQL refuses, which
ends FAILED at once, for good (a refusal would only come again on every re-run).

The first flush is one statement for a call whose packets fit one page (db/worker_writes.py);
a longer call's pages join it in one transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.logs import about
from db import calls, worker_writes
from db.flush import FlushStart
from db.outages import postgres_refusal
from db.packets import StoredPacket
from db.record import CallRecord
from db.states import CallState
from db.worker_writes import Claim
from jobs.attempts import LeaseLost
from jobs.resources import WorkerResources

log = logging.getLogger(__name__)
FLUSH_PAGE = 2000  # packets read from Redis and inserted in one statement
# The transcription takes the packets' data from the flush itself when a call is this small;
# a longer call's data is read back from PostgreSQL, so a worker's memory stays bounded.
KEEP_DATA_BYTES = 4 * 1024 * 1024


@dataclass
class Held:
    """A call this worker has flushed (or found flushed) and claimed."""

    claim: Claim
    chunks: list[str] | None = None  # the packets' data in sequence order, when kept


async def flush_call(res: WorkerResources, call_id: str, holder: str) -> Held | None:
    """Take the call's lease, copy the call and its packets from Redis to PostgreSQL and claim
    it, atomically; or, if an earlier run flushed it, claim it there. None if it is not the
    worker's to take (already ARCHIVED or FAILED, or unknown), or if PostgreSQL refused the
    call's data: the call is FAILED then, for good."""
    s = res.settings
    start = await res.flush.start(call_id, holder, s.lease_ttl_s, FLUSH_PAGE)
    live: CallRecord | None = None
    held: Held | None = None
    refused: str | None = None
    if start.meta:
        live = await res.live.record(call_id, start.meta, start.metadata, s.missing_list_cap)
        try:
            held = await _flush_new(res, live, start)
        except Exception as exc:
            refused = postgres_refusal(exc)
            if refused is None:
                raise  # an outage: the job is retried
    if held is None:
        # A re-run or a replay: the row exists (even if the flush was refused: a replayed call
        # whose own flush was refused is found here, and its packets are stored below).
        held = await _claim_flushed(res, call_id)
    if held is None and refused is not None and live is not None:
        await _fail_unflushed(res, live, _flush_refused(refused))
    elif held is not None and not held.claim.packets_stored:
        held = await _with_packets(res, held, start)
    if start.meta:
        await res.flush.forget_unflushed(call_id)
    return held


def _flush_refused(refused: str) -> str:
    return f"PostgreSQL refused the call's flush: {refused}; its packets are not stored"


PACKETS_LOST = "the call's packets were never stored in PostgreSQL and Redis no longer holds them"


async def _with_packets(res: WorkerResources, held: Held, start: FlushStart) -> Held | None:
    """A call whose flush was refused has a row but no packet. Replayed, its packets are stored
    now, from Redis, before the AI reads them; if Redis no longer holds them, or PostgreSQL
    refuses them again, the call fails again (None)."""
    try:
        stored = await _store_packets(res, held.claim, start)
    except Exception as exc:
        refused = postgres_refusal(exc)
        if refused is None:
            raise
        await fail_held(res, held.claim, _flush_refused(refused))
        return None
    if not stored:
        await fail_held(res, held.claim, PACKETS_LOST)
        return None
    return held


async def _store_packets(res: WorkerResources, claim: Claim, start: FlushStart) -> bool:
    """Every packet Redis holds of the call, in one transaction; False if it holds none."""
    if not start.meta:
        return False
    async with res.engine.begin() as conn:
        await worker_writes.insert_more_packets(
            conn, claim.call_id, sorted(start.first_page, key=_by_sequence)
        )
        if start.more:
            pages = res.flush.packet_pages(claim.call_id, FLUSH_PAGE, after=start.last_entry)
            async for page in pages:
                await worker_writes.insert_more_packets(conn, claim.call_id, page)
    return True


async def _fail_unflushed(res: WorkerResources, live: CallRecord, reason: str) -> None:
    """End a call whose flush PostgreSQL refused where everyone can see it: a FAILED row with
    what Redis knew of it and no packet, in a statement of its own. If the row exists (an
    earlier run flushed the call, or failed it so and it was replayed), fail that one."""
    try:
        written = await _write_failed_row(res, live, reason)
    except Exception as exc:
        refused = postgres_refusal(exc)
        if refused is None:
            raise
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
        return await worker_writes.fail_new_call(conn, live, reason)


async def fail_held(res: WorkerResources, claim: Claim, reason: str) -> None:
    """FAILED for good with `reason`, fenced by the claim. Nothing of the run goes with it (its
    unsaved attempts, a transcript, a sentiment): any of them may be what was refused."""
    async with res.autocommit.connect() as conn:
        failed = await worker_writes.finish(
            conn, claim, CallState.FAILED, reason, [], last_error=reason
        )
    if not failed:
        raise LeaseLost(claim.call_id)
    log.error("%s: FAILED for good: %s", claim.call_id, reason, extra=about(claim.call_id))


async def _flush_new(res: WorkerResources, live: CallRecord, start: FlushStart) -> Held | None:
    """The first flush of a call: its row (claimed), its packets, its transitions. One statement
    for a call whose packets fit one page; a longer call's pages join it in one transaction.
    None if the row exists already."""
    first = sorted(start.first_page, key=_by_sequence)
    if not start.more:
        async with res.autocommit.connect() as conn:
            claim = await worker_writes.flush_new_call(conn, live, first)
        return Held(claim, [p.data for p in first]) if claim else None
    async with res.engine.begin() as conn:
        claim = await worker_writes.flush_new_call(conn, live, first)
        if claim is None:
            return None
        kept: list[StoredPacket] | None = first
        size = _data_size(first)
        pages = res.flush.packet_pages(live.call_id, FLUSH_PAGE, after=start.last_entry)
        async for page in pages:
            page.sort(key=_by_sequence)
            await worker_writes.insert_more_packets(conn, live.call_id, page)
            size += _data_size(page)
            kept = kept + page if kept is not None and size <= KEEP_DATA_BYTES else None
    if kept is None or size > KEEP_DATA_BYTES:
        return Held(claim)
    kept.sort(key=_by_sequence)
    return Held(claim, [p.data for p in kept])


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


def _data_size(packets: list[StoredPacket]) -> int:
    return sum(len(p.data) for p in packets)


def _by_sequence(packet: StoredPacket) -> int:
    return packet.sequence
