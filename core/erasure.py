"""Asking for an erasure, in one place for every asker: the API's DELETE, retention (the worker's
cron) and a ledger replay. The ledger's row is written (and committed) first: from that moment
every read of the call answers 404 call_erased, and the row is what makes the erasure resumable
(the worker's upkeep queues again whatever the ledger says is unfinished). Then the action is
audited, then the one erasure job (jobs/erasure.py) is queued."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.audit import audit
from core.ingestion import Ingestion
from db import erasures
from db.erasures import LedgerEntry, Reason, Scope
from db.forget import CallRedis
from db.redis_client import RedisClient

# Queues the erasure job of (call id, scope): jobs/queue.py's enqueue_erasure, bound to a queue.
EnqueueErasure = Callable[[str, str], Awaitable[object]]

COMPLETION_REASON = "erasure"  # what a live call's completion says, when its erasure ends it
RETENTION_ACTOR = "retention"  # who the ledger and the audit trail say asked, for retention
AUDIT_ACTIONS = {Scope.CALL: "erase", Scope.AUDIO: "erase-audio"}


async def stop_call(ingestion: Ingestion, redis: RedisClient, call_id: str, actor: str) -> None:
    """A call being erased takes no more packets: a live one is completed (through the
    exactly-once completion, which queues its job: a worker brings it to a final state before
    the erasure deletes anything), and its done marker becomes a tombstone that never expires.
    Idempotent."""
    await ingestion.complete(call_id, COMPLETION_REASON, actor=actor)
    await CallRedis(redis).tombstone(call_id)


async def ask(
    sessions: async_sessionmaker[AsyncSession],
    enqueue: EnqueueErasure,
    ingestion: Ingestion,
    redis: RedisClient,
    call_id: str,
    scope: Scope,
    reason: Reason,
    actor: str,
    *,
    at: datetime | None = None,
    again: bool = False,
) -> LedgerEntry:
    """Record the erasure (unless recorded already; `again`: pending once more, for a replay),
    stop the call (stop_call, for a whole call's), audit it, and queue its job. Returns the
    ledger's row as it stands: `erased_at` set when it was finished already (then nothing is
    queued)."""
    asked = LedgerEntry(
        call_id=call_id,
        scope=scope,
        reason=reason,
        requested_by=actor,
        requested_at=at or datetime.now(UTC),
    )
    async with sessions() as session, session.begin():
        entry = await erasures.record(session, asked, again=again)
    if entry.erased_at is None:
        if scope is Scope.CALL:
            await stop_call(ingestion, redis, call_id, actor)
        if entry == asked or again:  # a new request (a repeated one was audited already)
            audit(AUDIT_ACTIONS[scope], call_id, actor)
        await enqueue(call_id, scope.value)
    return entry
