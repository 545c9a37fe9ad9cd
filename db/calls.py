"""PostgreSQL queries on calls. Each takes a session and never commits: the caller does."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import AiAttempt, Call, StateTransition
from db.packets import StoredPacket
from db.record import CallRecord, flushed_columns
from db.states import WORKER_STATES, CallState, can_transition

log = logging.getLogger(__name__)

# One statement per page of packets: arrays in, rows out, duplicates ignored (idempotent re-flush).
_INSERT_PACKETS = text(
    """
    INSERT INTO packet (call_id, sequence, timestamp, data, received_at)
    SELECT :call_id, s, t, d, to_timestamp(r)
    FROM unnest(CAST(:seqs AS bigint[]), CAST(:stamps AS float8[]), CAST(:datas AS text[]),
                CAST(:received AS float8[])) AS p(s, t, d, r)
    ON CONFLICT (call_id, sequence) DO NOTHING
    """
)


@dataclass(frozen=True, slots=True)
class Claim:
    """A worker's hold on a call: every write it makes is fenced by `epoch`."""

    call_id: str
    epoch: int
    state: CallState
    generation: int
    transcript: str | None


async def get_call(session: AsyncSession, call_id: str) -> Call | None:
    return await session.get(Call, call_id, populate_existing=True)


async def list_calls(
    session: AsyncSession,
    state: CallState | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> Sequence[Call]:
    query = select(Call).order_by(Call.created_at.desc(), Call.call_id.desc()).limit(limit)
    if state is not None:
        query = query.where(Call.state == state.value)
    if before is not None:
        query = query.where(tuple_(Call.created_at, Call.call_id) < tuple_(*before))
    return (await session.scalars(query)).all()


async def insert_flushed_call(session: AsyncSession, live: CallRecord) -> bool:
    """Create the call's row from what Redis knew; False if a previous run already did."""
    completed_at = live.completed_at or datetime.now(UTC)
    values = {**flushed_columns(live), "state": CallState.COMPLETED.value}
    values["completed_at"] = completed_at
    row = (
        insert(Call)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[Call.call_id])
        .returning(Call.call_id)
    )
    if (await session.execute(row)).scalar_one_or_none() is None:
        return False
    session.add_all(
        [
            StateTransition(
                call_id=live.call_id,
                from_state=None,
                to_state=CallState.IN_PROGRESS.value,
                at=live.created_at,
                reason="first packet",
            ),
            StateTransition(
                call_id=live.call_id,
                from_state=CallState.IN_PROGRESS.value,
                to_state=CallState.COMPLETED.value,
                at=completed_at,
                reason=f"completed ({live.completion_reason or 'explicit'})",
            ),
        ]
    )
    return True


async def insert_packets(
    session: AsyncSession, call_id: str, packets: Sequence[StoredPacket]
) -> None:
    if not packets:
        return
    await session.execute(
        _INSERT_PACKETS,
        {
            "call_id": call_id,
            "seqs": [p.sequence for p in packets],
            "stamps": [p.timestamp for p in packets],
            "datas": [p.data for p in packets],
            "received": [p.received_at for p in packets],
        },
    )


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


async def packet_data_in_order(session: AsyncSession, call_id: str) -> list[str]:
    query = text("SELECT data FROM packet WHERE call_id = :call_id ORDER BY sequence")
    return list((await session.scalars(query, {"call_id": call_id})).all())


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


async def claim(session: AsyncSession, call_id: str) -> Claim | None:
    """Take the call for this worker: bump the fencing epoch every later write must match."""
    row = (
        await session.execute(
            update(Call)
            .where(
                Call.call_id == call_id,
                Call.state.in_([s.value for s in WORKER_STATES]),
            )
            .values(lease_epoch=Call.lease_epoch + 1)
            .returning(Call.lease_epoch, Call.state, Call.generation, Call.transcript)
            .execution_options(synchronize_session=False)
        )
    ).one_or_none()
    if row is None:
        return None
    return Claim(call_id, row.lease_epoch, CallState(row.state), row.generation, row.transcript)


async def store_transcript(
    session: AsyncSession, call_id: str, epoch: int, transcript: str
) -> bool:
    stored = await session.execute(
        update(Call)
        .where(
            Call.call_id == call_id,
            Call.lease_epoch == epoch,
            Call.state == CallState.PROCESSING_AI.value,
        )
        .values(transcript=transcript)
        .returning(Call.call_id)
        .execution_options(synchronize_session=False)
    )
    return stored.scalar_one_or_none() is not None


async def record_attempt(session: AsyncSession, attempt: AiAttempt, epoch: int) -> bool:
    """Keep the attempt and bump the call's counter, unless another worker took the call."""
    counted = await session.execute(
        update(Call)
        .where(Call.call_id == attempt.call_id, Call.lease_epoch == epoch)
        .values(
            ai_attempts=Call.ai_attempts + 1,
            last_error=attempt.error if attempt.error else Call.last_error,
        )
        .returning(Call.call_id)
        .execution_options(synchronize_session=False)
    )
    if counted.scalar_one_or_none() is None:
        return False
    session.add(attempt)
    return True


async def failed_attempts(session: AsyncSession, call_id: str, step: str, generation: int) -> int:
    query = select(func.count()).where(
        AiAttempt.call_id == call_id,
        AiAttempt.step == step,
        AiAttempt.generation == generation,
        AiAttempt.outcome != "ok",
    )
    return int(await session.scalar(query) or 0)


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
