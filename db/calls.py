"""PostgreSQL queries on calls. Each takes a session and never commits: the caller does."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, Text, and_, bindparam, func, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from db.engine import execute_once
from db.erasures import Scope
from db.models import AiAttempt, Call, Erasure, StateTransition
from db.states import WORKER_STATES, CallState, can_transition
from db.worker_writes import BUDGET_KEY_SQL, Claim

log = logging.getLogger(__name__)


async def get_call(session: AsyncSession, call_id: str) -> Call | None:
    return await session.get(Call, call_id, populate_existing=True)


_WANTED = select(bindparam("call_id", type_=Text).label("call_id")).subquery("wanted")
_CALLS, _ERASURES = Call.__table__, Erasure.__table__
# The status read's one statement: the call's row (its columns, null when it is not flushed) and
# its erasure's reason and time (null when none was asked for), as one row whatever exists.
_STATUS = select(
    _CALLS,
    _ERASURES.c.reason.label("erasure_reason"),
    _ERASURES.c.requested_at.label("erasure_requested_at"),
).select_from(
    _WANTED.outerjoin(
        _ERASURES,
        and_(_ERASURES.c.call_id == _WANTED.c.call_id, _ERASURES.c.scope == Scope.CALL.value),
    ).outerjoin(_CALLS, _CALLS.c.call_id == _WANTED.c.call_id)
)


async def status_row(source: AsyncSession | AsyncEngine, call_id: str) -> Row[Any]:
    """The call's row and its erasure in one round trip, without the ORM (GET /v1/calls/{id},
    read ten times a second and more by a dashboard): `erasure_reason` is set when the call's
    erasure was asked for, `call_id` is null when PostgreSQL has no row of the call. From a
    session (in its transaction, beside the route's other reads), or from a reader
    (db/engine.make_reader: one statement, no transaction)."""
    params = {"call_id": call_id}
    if isinstance(source, AsyncEngine):
        return (await execute_once(source, _STATUS, params)).one()
    connection = await source.connection()
    return (await connection.execute(_STATUS, params)).one()


async def list_calls(
    session: AsyncSession,
    state: CallState | None,
    before: tuple[datetime, str] | None,
    limit: int,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Sequence[Call]:
    """Newest first, before the keyset `before`, created in [since, until)."""
    query = select(Call).order_by(Call.created_at.desc(), Call.call_id.desc()).limit(limit)
    if state is not None:
        query = query.where(Call.state == state.value)
    if since is not None:
        query = query.where(Call.created_at >= since)
    if until is not None:
        query = query.where(Call.created_at < until)
    if before is not None:
        query = query.where(tuple_(Call.created_at, Call.call_id) < tuple_(*before))
    return (await session.scalars(query)).all()


async def history(
    session: AsyncSession, call_id: str
) -> tuple[Sequence[StateTransition], Sequence[AiAttempt]]:
    transitions = await session.scalars(
        select(StateTransition)
        .where(StateTransition.call_id == call_id)
        .order_by(StateTransition.id)
    )
    attempts = await session.scalars(
        select(AiAttempt).where(AiAttempt.call_id == call_id).order_by(AiAttempt.id)
    )
    return transitions.all(), attempts.all()


async def transition(
    session: AsyncSession,
    call_id: str,
    target: CallState,
    reason: str,
    *,
    epoch: int | None = None,
    **values: Any,
) -> bool:
    """Move a call along the state machine and record the move. Returns False, writing nothing,
    if the move is not allowed from the call's current state or, when `epoch` is given, if
    another worker has taken the call since (the fence)."""
    row = (
        await session.execute(
            select(Call.state, Call.lease_epoch).where(Call.call_id == call_id).with_for_update()
        )
    ).one_or_none()
    if row is None:
        return False
    if epoch is not None and row.lease_epoch != epoch:
        log.info("fenced off %s: epoch %s is stale (now %s)", call_id, epoch, row.lease_epoch)
        return False
    source = CallState(row.state)
    if not can_transition(source, target):
        log.warning("refused transition of %s: %s -> %s", call_id, source, target)
        return False
    await session.execute(
        update(Call)
        .where(Call.call_id == call_id)
        .values(state=target.value, **values)
        .execution_options(synchronize_session=False)
    )
    session.add(
        StateTransition(
            call_id=call_id,
            from_state=source.value,
            to_state=target.value,
            at=datetime.now(UTC),
            reason=reason,
        )
    )
    return True


# What each unit of work (worker_writes.budget_key) has failed in the final runs of the call's
# generation: its budget spent. A live window's attempts spend none of it.
_SPENT = text(
    f"""
    SELECT coalesce(jsonb_object_agg(unit, n), '{{}}'::jsonb) FROM (
        SELECT {BUDGET_KEY_SQL} AS unit, count(*) AS n FROM ai_attempt
        WHERE call_id = :call_id AND generation = :generation AND NOT live AND outcome <> 'ok'
        GROUP BY 1
    ) AS spent
    """
)


async def claim(session: AsyncSession, call_id: str) -> Claim | None:
    """Take a flushed call for this worker: bump the fencing epoch every later write must match.
    Also returns what the run needs to resume: the transcript, the failed attempts per unit of
    work in this generation (their budget is spent), what the call was opened with."""
    row = (
        await session.execute(
            update(Call)
            .where(
                Call.call_id == call_id,
                Call.state.in_([s.value for s in WORKER_STATES]),
            )
            .values(lease_epoch=Call.lease_epoch + 1)
            .returning(
                Call.lease_epoch, Call.state, Call.generation, Call.transcript, Call.start_metadata
            )
            .execution_options(synchronize_session=False)
        )
    ).one_or_none()
    if row is None:
        return None
    spent = await session.scalar(_SPENT, {"call_id": call_id, "generation": row.generation})
    failed = {str(unit): int(n) for unit, n in (spent or {}).items()}
    state = CallState(row.state)
    return Claim(
        call_id, row.lease_epoch, state, row.generation, row.transcript, failed, row.start_metadata
    )


async def count_by_state(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(select(Call.state, func.count()).group_by(Call.state))
    return {str(state): int(n) for state, n in rows}


async def stalled_calls(session: AsyncSession, idle_for_s: float, limit: int = 500) -> list[str]:
    """Calls in a worker state whose row has not changed for `idle_for_s`: candidates for the
    reaper, which still checks the lease before it touches one."""
    query = (
        select(Call.call_id)
        .where(
            Call.state.in_([s.value for s in WORKER_STATES]),
            Call.updated_at < func.now() - timedelta(seconds=idle_for_s),
        )
        .order_by(Call.updated_at)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def replay_failed(session: AsyncSession, call_id: str) -> bool:
    """Dead-letter replay: FAILED -> COMPLETED with a fresh attempt budget, exactly once."""
    return await transition(
        session,
        call_id,
        CallState.COMPLETED,
        "replayed by request",
        generation=Call.generation + 1,
        last_error=None,
        finished_at=None,
    )
