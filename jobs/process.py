"""process_call: flush a completed call to PostgreSQL, run transcription then sentiment, and end
in ARCHIVED or FAILED. Idempotent: delivery is at least once, so every step checks where the call
is, writes with upserts, and fences its writes with the epoch it claimed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from db import calls
from db.models import AiAttempt
from db.states import TERMINAL_STATES, CallState
from jobs.attempts import AttemptRecord, LeaseLost, RetryPolicy, StepExhausted, run_step
from jobs.resources import WorkerResources

log = logging.getLogger(__name__)
T = TypeVar("T")
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
FLUSH_PAGE = 2000  # packets read from Redis and inserted in one statement


class UnknownCall(LookupError):
    """Neither Redis nor PostgreSQL knows the call (its data expired, or it never existed)."""


async def process_call(res: WorkerResources, call_id: str) -> str:
    """Bring one completed call to a terminal state; returns the state it ends in."""
    holder = f"{WORKER_ID}:{uuid.uuid4().hex[:8]}"
    ttl = res.settings.lease_ttl_s
    await res.leases.take(call_id, holder, ttl)
    try:
        async with _heartbeat(res, call_id, holder):
            await flush_call(res, call_id)
            async with res.sessions() as session, session.begin():
                claim = await calls.claim(session, call_id)
            if claim is None:
                settled = await release_if_settled(res, call_id)
                return settled.value if settled else "UNKNOWN"
            state = await _run_ai(res, claim)
    except LeaseLost:
        log.warning("%s: lost the call to another worker; leaving it to them", call_id)
        return "LEASE_LOST"
    except UnknownCall:
        # Nothing to process and nothing to lose: stop the reaper from trying again and again.
        log.error("%s: neither Redis nor PostgreSQL knows this call; dropping its job", call_id)
        await res.flush.release(call_id, 1, 1)
        return "UNKNOWN"
    except asyncio.CancelledError:
        # Shutdown or timeout: arq re-queues a cancelled job; let the next worker start now.
        await asyncio.shield(res.leases.drop(call_id, holder))
        raise
    await _release(res, call_id)
    return state


async def flush_call(res: WorkerResources, call_id: str) -> None:
    """Copy the call and its packets from Redis to PostgreSQL in one transaction, once."""
    async with res.sessions() as session:
        if await calls.get_call(session, call_id) is not None:
            return  # flushed by an earlier run: the row and its packets commit together
    # The gaps come from the dedup bitmap, so the packets can stream through page by page.
    live = await res.live.get(call_id, res.settings.missing_list_cap)
    if live is None:
        raise UnknownCall(call_id)
    async with res.sessions() as session, session.begin():
        if await calls.insert_flushed_call(session, live):
            async for page in res.flush.packet_pages(call_id, FLUSH_PAGE):
                page.sort(key=lambda p: p.sequence)
                await calls.insert_packets(session, call_id, page)
    await res.flush.forget_unflushed(call_id)


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


async def _run_ai(res: WorkerResources, claim: calls.Claim) -> str:
    call_id, epoch = claim.call_id, claim.epoch
    if claim.state is CallState.COMPLETED:
        await _fenced_move(res, claim, CallState.PROCESSING_AI, "worker picked the call up")
    policy = _policy(res)
    # One budget for the call's AI work in this run, shared by both steps.
    step = functools.partial(_step, res, claim, policy, time.monotonic() + policy.budget_s)
    try:
        transcript = claim.transcript
        if transcript is None:
            async with res.sessions() as session:
                chunks = await calls.packet_data_in_order(session, call_id)
            transcript = await step("transcription", lambda: res.ai.transcribe(call_id, chunks))
            async with res.sessions() as session, session.begin():
                if not await calls.store_transcript(session, call_id, epoch, transcript):
                    raise LeaseLost(call_id)
        text = transcript
        sentiment = await step("sentiment", lambda: res.ai.analyse_sentiment(call_id, text))
    except StepExhausted as exc:
        await _fenced_move(
            res, claim, CallState.FAILED, str(exc), last_error=str(exc), finished_at=_now()
        )
        return CallState.FAILED.value
    await _fenced_move(
        res,
        claim,
        CallState.ARCHIVED,
        "transcription and sentiment stored",
        sentiment_label=sentiment.label,
        sentiment_score=sentiment.score,
        finished_at=_now(),
    )
    return CallState.ARCHIVED.value


async def _step(
    res: WorkerResources,
    claim: calls.Claim,
    policy: RetryPolicy,
    deadline: float,
    step: str,
    request: Callable[[], Awaitable[T]],
) -> T:
    async with res.sessions() as session:
        failed = await calls.failed_attempts(session, claim.call_id, step, claim.generation)

    async def record(attempt: AttemptRecord) -> bool:
        row = AiAttempt(
            call_id=claim.call_id,
            step=attempt.step,
            generation=claim.generation,
            attempt=attempt.attempt,
            outcome=attempt.outcome,
            error=attempt.error,
            started_at=attempt.started_at,
            duration_ms=attempt.duration_ms,
        )
        async with res.sessions() as session, session.begin():
            return await calls.record_attempt(session, row, claim.epoch)

    return await run_step(
        step, request, policy, record, failed, deadline=deadline, breaker=res.breaker
    )


async def _fenced_move(
    res: WorkerResources, claim: calls.Claim, target: CallState, reason: str, **values: object
) -> None:
    async with res.sessions() as session, session.begin():
        if not await calls.transition(
            session, claim.call_id, target, reason, epoch=claim.epoch, **values
        ):
            raise LeaseLost(claim.call_id)


def _policy(res: WorkerResources) -> RetryPolicy:
    s = res.settings
    return RetryPolicy(
        max_attempts=s.ai_max_attempts,
        attempt_timeout_s=s.ai_attempt_timeout_s,
        backoff_base_s=s.ai_backoff_base_s,
        backoff_max_s=s.ai_backoff_max_s,
        budget_s=s.ai_call_budget_s,
    )


def _now() -> datetime:
    return datetime.now(UTC)


@contextlib.asynccontextmanager
async def _heartbeat(res: WorkerResources, call_id: str, holder: str) -> AsyncIterator[None]:
    """Renew the call's lease while the job runs, so the reaper knows this worker is alive.

    The beat is stopped by an event, never cancelled: cancelling a redis-py command midway can
    leave its connection broken for the next user of the pool."""
    ttl = res.settings.lease_ttl_s
    stop = asyncio.Event()

    async def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ttl / 3)
                return
            try:
                if not await res.leases.renew(call_id, holder, ttl):
                    log.warning("%s: lease taken over by another worker", call_id)
                    return
            except Exception as exc:  # Redis blips must not kill the job; the fence protects us
                log.warning("%s: lease renewal failed: %r", call_id, exc)

    task = asyncio.create_task(beat(), name=f"lease:{call_id}")
    try:
        yield
    finally:
        stop.set()
        await asyncio.shield(task)
