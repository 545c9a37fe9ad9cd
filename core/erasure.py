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
from db import erasures
from db.erasures import LedgerEntry, Reason, Scope

# Queues the erasure job of (call id, scope): jobs/queue.py's enqueue_erasure, bound to a queue.
EnqueueErasure = Callable[[str, str], Awaitable[object]]

RETENTION_ACTOR = "retention"  # who the ledger and the audit trail say asked, for retention
AUDIT_ACTIONS = {Scope.CALL: "erase", Scope.AUDIO: "erase-audio"}


async def ask(
    sessions: async_sessionmaker[AsyncSession],
    enqueue: EnqueueErasure,
    call_id: str,
    scope: Scope,
    reason: Reason,
    actor: str,
    *,
    at: datetime | None = None,
    again: bool = False,
) -> LedgerEntry:
    """Record the erasure (unless recorded already; `again`: pending once more, for a replay),
    audit it, and queue its job. Returns the ledger's row as it stands: `erased_at` set when it
    was finished already (then nothing is queued)."""
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
        if entry == asked or again:  # a new request (a repeated one was audited already)
            audit(AUDIT_ACTIONS[scope], call_id, actor)
        await enqueue(call_id, scope.value)
    return entry
