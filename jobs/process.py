"""process_call: flush a completed call to PostgreSQL, run transcription then sentiment, and end
in ARCHIVED or FAILED. Idempotent: delivery is at least once, so every step checks where the call
is, writes with upserts, and fences its writes with the epoch it claimed.

A call whose AI answers first time costs three PostgreSQL statements: the flush (which also
claims the call), the transcript, and the final write (sentiment, attempts, transition). Failed
attempts are written as they happen, so a budget spent is spent even if the worker dies.

A call whose data PostgreSQL refuses (db.outages.postgres_refusal: a NUL in text, a number out of
its column's range) would be refused again on every re-run, so it ends FAILED at once with the
reason, and its keys are released like any finished call's. Outages are not refusals: the job is
retried for them (jobs/worker.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from core import metrics
from core.logs import about
from db import calls, worker_writes
from db.flush import FlushStart
from db.outages import postgres_refusal
from db.packets import StoredPacket
from db.record import CallRecord
from db.states import TERMINAL_STATES, CallState
from db.worker_writes import AttemptRecord, Claim
from jobs.attempts import LeaseLost, RetryPolicy, StepExhausted, run_step
from jobs.resources import WorkerResources

log = logging.getLogger(__name__)
T = TypeVar("T")
FLUSH_PAGE = 2000  # packets read from Redis and inserted in one statement
# The transcription takes the packets' data from the flush itself when a call is this small;
# a longer call's data is read back from PostgreSQL, so a worker's memory stays bounded.
KEEP_DATA_BYTES = 4 * 1024 * 1024


class UnknownCall(LookupError):
    """Neither Redis nor PostgreSQL knows the call (its data expired, or it never existed)."""


@dataclass
class Held:
    """A call this worker has flushed (or found flushed) and claimed."""

    claim: Claim
    chunks: list[str] | None = None  # the packets' data in sequence order, when kept


async def process_call(res: WorkerResources, call_id: str) -> str:
    """Bring one completed call to a terminal state; returns the state it ends in."""
    try:
        async with res.lease_keeper.hold(call_id, taken=True) as holder:
            try:
                with res.stages.timing("flush"), metrics.FLUSH_SECONDS.time():
                    held = await flush_call(res, call_id, holder)
                if held is None:
                    settled = await release_if_settled(res, call_id)
                    if settled is None:
                        raise UnknownCall(call_id)
                    return settled.value
                state = await _run_ai(res, held)
            except asyncio.CancelledError:
                # Shutdown or timeout: arq re-queues a cancelled job; let the next worker start.
                await asyncio.shield(res.leases.drop(call_id, holder))
                raise
    except LeaseLost:
        log.warning(
            "%s: lost the call to another worker; leaving it to them", call_id, extra=about(call_id)
        )
        return "LEASE_LOST"
    except UnknownCall:
        # Nothing to process and nothing to lose: stop the reaper from trying again and again.
        log.error(
            "%s: neither Redis nor PostgreSQL knows this call; dropping its job",
            call_id,
            extra=about(call_id),
        )
        await res.flush.release(call_id, 1, 1)
        return "UNKNOWN"
    with res.stages.timing("finish"):
        await _release(res, call_id)
    res.stages.calls += 1
    return state


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
        await _fail_held(res, held.claim, _flush_refused(refused))
        return None
    if not stored:
        await _fail_held(res, held.claim, PACKETS_LOST)
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
        await _fail_held(res, held.claim, reason)


async def _write_failed_row(res: WorkerResources, live: CallRecord, reason: str) -> bool:
    async with res.autocommit.connect() as conn:
        return await worker_writes.fail_new_call(conn, live, reason)


async def _fail_held(res: WorkerResources, claim: Claim, reason: str) -> None:
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


async def release_if_settled(res: WorkerResources, call_id: str) -> CallState | None:
    """The call's state in PostgreSQL (None if it has no row). A call that reached a terminal
    state gets its Redis keys released, in case its worker died between commit and release."""
    async with res.sessions() as session:
        call = await calls.get_call(session, call_id)
    if call is None:
        return None
    state = CallState(call.state)
    if state in TERMINAL_STATES:
        await _release(res, call_id)
    return state


async def _release(res: WorkerResources, call_id: str) -> None:
    s = res.settings
    await res.flush.release(call_id, s.key_retention_s, s.completed_marker_retention_s)


@dataclass
class _Journal:
    """What the run has to write: successful attempts wait for the next write; a failed one is
    written at once, so its budget stays spent, and so is a transcript."""

    res: WorkerResources
    claim: Claim
    attempts: list[AttemptRecord] = field(default_factory=list)
    transcript: str | None = None  # known but not yet stored

    async def record(self, attempt: AttemptRecord) -> bool:
        self.attempts.append(attempt)
        return attempt.outcome == "ok" or await self.save()

    async def save(self) -> bool:
        """Write what waits; False if another worker took the call since."""
        async with self.res.autocommit.connect() as conn:
            kept = await worker_writes.write_progress(
                conn, self.claim, self.attempts, self.transcript
            )
        self.attempts, self.transcript = [], None
        return kept

    async def finish(self, target: CallState, reason: str, **results: object) -> None:
        with self.res.stages.timing("finish"):
            await self._finish(target, reason, **results)

    async def _finish(self, target: CallState, reason: str, **results: object) -> None:
        async with self.res.autocommit.connect() as conn:
            finished = await worker_writes.finish(
                conn,
                self.claim,
                target,
                reason,
                self.attempts,
                transcript=self.transcript,
                **results,  # type: ignore[arg-type]
            )
        if not finished:
            raise LeaseLost(self.claim.call_id)


async def _run_ai(res: WorkerResources, held: Held) -> str:
    try:
        return await _ai_steps(res, held)
    except Exception as exc:
        refused = postgres_refusal(exc)
        if refused is None:
            raise
    reason = f"PostgreSQL refused a write of the call's AI results: {refused}"
    await _fail_held(res, held.claim, reason)
    return CallState.FAILED.value


async def _ai_steps(res: WorkerResources, held: Held) -> str:
    claim, call_id = held.claim, held.claim.call_id
    policy = _policy(res)
    # One budget for the call's AI work in this run, shared by both steps.
    deadline = time.monotonic() + policy.budget_s
    journal = _Journal(res, claim)

    async def step(name: str, request: Callable[[], Awaitable[T]]) -> T:
        failed = claim.failed.get(name, 0)
        with res.stages.timing("ai"):
            return await run_step(
                name,
                request,
                policy,
                journal.record,
                failed,
                deadline=deadline,
                breaker=res.breaker,
                limiter=res.ai_limiter,
            )

    try:
        transcript = claim.transcript
        if transcript is None:
            chunks = held.chunks
            if chunks is None:
                async with res.sessions() as session:
                    chunks = await calls.packet_data_in_order(session, call_id)
            transcript = await step("transcription", lambda: res.ai.transcribe(call_id, chunks))
            # Kept at once: a worker that dies during sentiment must not cost a transcription.
            journal.transcript = transcript
            if not await journal.save():
                raise LeaseLost(call_id)
        text = transcript
        sentiment = await step("sentiment", lambda: res.ai.analyse_sentiment(call_id, text))
    except StepExhausted as exc:
        await journal.finish(CallState.FAILED, str(exc), last_error=str(exc))
        return CallState.FAILED.value
    await journal.finish(
        CallState.ARCHIVED,
        "transcription and sentiment stored",
        sentiment=(sentiment.label, sentiment.score),
    )
    return CallState.ARCHIVED.value


def _policy(res: WorkerResources) -> RetryPolicy:
    s = res.settings
    return RetryPolicy(
        max_attempts=s.ai_max_attempts,
        attempt_timeout_s=s.ai_attempt_timeout_s,
        backoff_base_s=s.ai_backoff_base_s,
        backoff_max_s=s.ai_backoff_max_s,
        budget_s=s.ai_call_budget_s,
    )
