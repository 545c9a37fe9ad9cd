"""PostgreSQL side of erasure: the ledger (table `erasure`), the deletion of what a call left in
PostgreSQL, and the calls retention has made due. Each function takes a session or connection
and never commits: the caller does.

The ledger holds nothing of a call's content (its id, what was erased, why, who asked, when), so
that it can outlive the call and be replayed after a restore (jobs/erasure.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from db.models import (
    AiAttempt,
    Call,
    CallSegment,
    Erasure,
    StateTransition,
    TranscriptWindow,
    Utterance,
)
from db.states import TERMINAL_STATES


class Scope(StrEnum):
    CALL = "call"  # everything the call left
    AUDIO = "audio"  # its recording only (AUDIO_RETENTION_DAYS): transcript and figures stay


class Reason(StrEnum):
    REQUEST = "request"  # DELETE /v1/calls/{id}
    RETENTION = "retention"  # RETENTION_DAYS, AUDIO_RETENTION_DAYS


class LedgerEntry(BaseModel):
    """One row of the erasure ledger, as GET /v1/erasures answers it and a replay reads it back:
    nothing of the call's content."""

    model_config = ConfigDict(frozen=True)

    call_id: str
    scope: Scope = Field(description="`call`: everything it left; `audio`: its recording only.")
    reason: Reason = Field(description="`request` (DELETE) or `retention`.")
    requested_by: str = Field(
        description="Who asked: `key:<id>` (an API key's id, never the key), `retention`, "
        "`loopback-without-keys`."
    )
    requested_at: datetime
    erased_at: datetime | None = Field(None, description="Null while the erasure runs.")


# Every table holding a row of a call, children first (state_transition names call.call_id).
CALL_TABLES = (CallSegment, TranscriptWindow, Utterance, AiAttempt, StateTransition, Call)


def _entry(row: Erasure) -> LedgerEntry:
    return LedgerEntry(
        call_id=row.call_id,
        scope=Scope(row.scope),
        reason=Reason(row.reason),
        requested_by=row.requested_by,
        requested_at=row.requested_at,
        erased_at=row.erased_at,
    )


async def record(session: AsyncSession, entry: LedgerEntry, *, again: bool = False) -> LedgerEntry:
    """Write the ledger's row of an erasure unless it has one; `again` (a replay after a restore)
    makes a finished one pending once more. Returns the row as it stands."""
    values = {
        "call_id": entry.call_id,
        "scope": entry.scope.value,
        "reason": entry.reason.value,
        "requested_by": entry.requested_by,
        "requested_at": entry.requested_at,
        "erased_at": None,
    }
    statement = insert(Erasure).values(**values)
    target = [Erasure.call_id, Erasure.scope]
    if again:
        statement = statement.on_conflict_do_update(
            index_elements=target, set_={"erased_at": None, "requeues": 0}
        )
    else:
        # Asked again while unfinished (its upkeep gave up, say): its requeues start afresh.
        statement = statement.on_conflict_do_update(
            index_elements=target, set_={"requeues": 0}, where=Erasure.erased_at.is_(None)
        )
    await session.execute(statement)
    found = await find(session, entry.call_id, entry.scope)
    assert found is not None
    return found


async def find(session: AsyncSession, call_id: str, scope: Scope) -> LedgerEntry | None:
    row = await session.scalar(
        select(Erasure)
        .where(Erasure.call_id == call_id, Erasure.scope == scope.value)
        .execution_options(populate_existing=True)
    )
    return _entry(row) if row is not None else None


async def erased(session: AsyncSession, call_id: str) -> LedgerEntry | None:
    """The call's erasure if one was asked for (running or done): the call is gone for every
    reader from that moment."""
    return await find(session, call_id, Scope.CALL)


async def erased_among(session: AsyncSession, call_ids: Sequence[str]) -> set[str]:
    """Which of the calls have been (or are being) erased: the listing leaves them out."""
    if not call_ids:
        return set()
    found = await session.scalars(
        select(Erasure.call_id).where(
            Erasure.call_id.in_(list(call_ids)), Erasure.scope == Scope.CALL.value
        )
    )
    return set(found.all())


async def page(
    session: AsyncSession, since: datetime | None, after_id: int, limit: int
) -> tuple[list[LedgerEntry], int | None]:
    """Ledger rows in the order they were written, after row `after_id`; with `since`, only the
    erasures not finished before it (what a backup taken at `since` still holds). Returns the
    rows and the id to pass as `after_id` for the next page (None at the end)."""
    query = select(Erasure).where(Erasure.id > after_id).order_by(Erasure.id).limit(limit + 1)
    if since is not None:
        query = query.where(or_(Erasure.erased_at.is_(None), Erasure.erased_at >= since))
    rows = list((await session.scalars(query)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return [_entry(r) for r in rows], (rows[-1].id if more else None)


# The upkeep queues an unfinished erasure again at most this many times (once a run, a minute
# apart: about an hour); past it, the erasure stays unfinished in the ledger, said in the log,
# until it is asked for again (DELETE), which starts its count afresh.
MAX_REQUEUES = 60


async def pending(
    session: AsyncSession, requested_before: datetime, limit: int
) -> list[LedgerEntry]:
    """Erasures asked for before `requested_before` and not finished (their job was lost, or
    its worker died), not yet queued again MAX_REQUEUES times: the upkeep queues them again."""
    rows = await session.scalars(
        select(Erasure)
        .where(
            Erasure.erased_at.is_(None),
            Erasure.requested_at < requested_before,
            Erasure.requeues < MAX_REQUEUES,
        )
        .order_by(Erasure.requested_at)
        .limit(limit)
    )
    return [_entry(r) for r in rows]


async def requeued(session: AsyncSession, call_id: str, scope: Scope) -> int:
    """Count one more time the upkeep queued the erasure again; returns the count."""
    count = await session.scalar(
        update(Erasure)
        .where(Erasure.call_id == call_id, Erasure.scope == scope.value)
        .values(requeues=Erasure.requeues + 1)
        .returning(Erasure.requeues)
    )
    return int(count or 0)


async def finish(session: AsyncSession, call_id: str, scope: Scope, at: datetime) -> None:
    await session.execute(
        update(Erasure)
        .where(
            Erasure.call_id == call_id, Erasure.scope == scope.value, Erasure.erased_at.is_(None)
        )
        .values(erased_at=at)
    )


async def delete_call_rows(conn: AsyncConnection, call_id: str) -> int:
    """Every row the call left in PostgreSQL (its ledger rows excepted); returns how many."""
    gone = 0
    for table in CALL_TABLES:
        result = await conn.execute(delete(table).where(table.call_id == call_id))
        gone += result.rowcount
    return gone


async def delete_audio_rows(conn: AsyncConnection, call_id: str, at: datetime) -> int:
    """The call's recording (its segments' rows), and the call says when it went."""
    result = await conn.execute(delete(CallSegment).where(CallSegment.call_id == call_id))
    await conn.execute(update(Call).where(Call.call_id == call_id).values(audio_erased_at=at))
    return int(result.rowcount)


def _not_in_ledger(scope: Scope):  # type: ignore[no-untyped-def]
    return ~exists().where(Erasure.call_id == Call.call_id, Erasure.scope == scope.value)


async def due(
    session: AsyncSession, scope: Scope, created_before: datetime, limit: int
) -> Sequence[str]:
    """Finished calls (ARCHIVED or FAILED) created before `created_before` whose erasure of
    `scope` has not been asked for yet, oldest first: a bounded batch for retention."""
    query = (
        select(Call.call_id)
        .where(
            Call.created_at < created_before,
            Call.state.in_([s.value for s in TERMINAL_STATES]),
            _not_in_ledger(scope),
        )
        .order_by(Call.created_at)
        .limit(limit)
    )
    if scope is Scope.AUDIO:  # nor a call whose whole erasure was asked for
        query = query.where(Call.audio_erased_at.is_(None), _not_in_ledger(Scope.CALL))
    return list((await session.scalars(query)).all())
