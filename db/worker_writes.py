"""The worker's writes to PostgreSQL, each one statement (one round trip, atomic on its own):

- `flush_new_call`: the call row (already claimed, in PROCESSING_AI) and its first three
  transitions (its audio is in its segments already: jobs/segments.py);
- `fail_new_call`: the row of a call whose flush PostgreSQL refused, FAILED;
- `write_progress`: AI attempts (and the transcript, once known) of a call the worker holds;
- `finish`: the final state, the results, the attempts and the transition.

The statements that make a call's announced states (its row created: `call.completed`; ARCHIVED,
FAILED) write its webhooks in the same statement (db/outbox.py's OUTBOX fragment).

Plain SQL with CTEs rather than ORM sessions, on purpose: a call whose AI answers first time
costs the worker three statements instead of about twenty (BENCHMARKS.md); the hot ones go to
asyncpg itself (db/direct.py). Every write after the flush is fenced by the claim's epoch and
guarded by the state machine (db/states.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from db.direct import Direct, Executor
from db.models import Call
from db.outbox import OUTBOX, EventType, Webhooks
from db.record import FLUSHED, CallRecord, flushed_columns
from db.states import CallState, can_transition, sources_of


@dataclass(frozen=True, slots=True)
class Claim:
    """A worker's hold on a call: every write it makes is fenced by `epoch`."""

    call_id: str
    epoch: int
    state: CallState
    generation: int
    transcript: str | None
    # Failed attempts of the final runs in this generation, by unit of work (budget_key): a
    # budget spent stays spent if the worker dies. A live window's attempts spend none of it.
    failed: dict[str, int]
    # What the call was opened with (its media format: how to read its audio), known with the
    # claim so that the run needs no read of the row for it.
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One request to the AI provider, as it is kept in ai_attempt."""

    step: str
    attempt: int
    outcome: str  # ok | error | timeout | rejected
    error: str | None
    started_at: datetime
    duration_ms: float
    window: str | None = None  # the transcription window it is for; None: the sentiment step
    live: bool = False  # made while the call went on, not by its final run

    @property
    def budget(self) -> str:
        return budget_key(self.step, self.window)


def budget_key(step: str, window: str | None) -> str:
    """The unit of work a retry budget belongs to: a step, and for a transcription its window
    (a window's label is where it starts and ends, the same on every run of a generation)."""
    return step if window is None else f"{step}|{window}"


# budget_key in SQL, for the claim's count of what each unit has spent.
BUDGET_KEY_SQL = "step || coalesce('|' || window_label, '')"


# The path a call has taken by the time the worker holds it, recorded by the flush.
FLUSH_PATH = (
    (None, CallState.IN_PROGRESS, "first packet"),
    (CallState.IN_PROGRESS, CallState.COMPLETED, "completed"),
    (CallState.COMPLETED, CallState.PROCESSING_AI, "worker picked the call up"),
)
assert all(can_transition(source, target) for source, target, _ in FLUSH_PATH)
# The path of a call whose flush PostgreSQL refused: the same, then FAILED (with the reason).
REFUSED_PATH = (*FLUSH_PATH, (CallState.PROCESSING_AI, CallState.FAILED, None))
assert all(can_transition(source, target) for source, target, _ in REFUSED_PATH)

# The worker's bookkeeping starts at: claimed once, no AI attempt, first generation.
_NEW_CALL_BOOKKEEPING = {"lease_epoch": 1, "ai_attempts": 0, "generation": 0}
_NEW_CALL_COLUMNS = (*FLUSHED.values(), *_NEW_CALL_BOOKKEEPING)
# The attempts' arrays (_attempt_arrays), one row an attempt.
_ATTEMPT_ARRAYS = """unnest(CAST(:a_step AS text[]), CAST(:a_n AS int[]),
                          CAST(:a_outcome AS text[]), CAST(:a_error AS text[]),
                          CAST(:a_started AS timestamptz[]), CAST(:a_ms AS float8[]),
                          CAST(:a_window AS text[]), CAST(:a_live AS boolean[]))
                   AS a(step, n, outcome, error, started, ms, win, live)"""
_ATTEMPTS = f"""
    attempts AS (
        INSERT INTO ai_attempt
            (call_id, step, generation, attempt, outcome, error, started_at, duration_ms,
             window_label, live)
        SELECT held.call_id, a.step, held.generation, a.n, a.outcome, a.error, a.started, a.ms,
               a.win, a.live
        FROM held, {_ATTEMPT_ARRAYS}
    )"""

_MOVES = """
    moves AS (
        INSERT INTO state_transition (call_id, from_state, to_state, at, reason)
        SELECT held.call_id, m.f, m.t, m.a, m.r
        FROM held, unnest(CAST(:m_from AS text[]), CAST(:m_to AS text[]),
                          CAST(:m_at AS timestamptz[]), CAST(:m_reason AS text[]))
                   AS m(f, t, a, r)
    )"""


def _typed(columns: Sequence[str]) -> list[Any]:
    return [bindparam(c, type_=Call.__table__.c[c].type) for c in columns]


# A live call's windows were transcribed before its row existed (jobs/transcription.py): the
# row starts with their attempts counted. They spend none of the final run's budgets: a window
# that failed live is tried again at the end with a budget of its own.
_LIVE_ATTEMPTS = """
    live AS (SELECT count(*) AS n FROM ai_attempt WHERE call_id = :call_id AND generation = 0)"""
_FLUSH_NEW_CALL = Direct(
    text(
        f"""
    WITH {_LIVE_ATTEMPTS}, held AS (
        INSERT INTO call ({", ".join(_NEW_CALL_COLUMNS)})
        SELECT {", ".join("live.n" if c == "ai_attempts" else f":{c}" for c in _NEW_CALL_COLUMNS)}
        FROM live
        ON CONFLICT (call_id) DO NOTHING
        RETURNING call_id
    ), {_MOVES}, {OUTBOX}
    SELECT count(*) AS created FROM held
    """
    ).bindparams(*_typed([c for c in _NEW_CALL_COLUMNS if c != "ai_attempts"]))
)

_REFUSED_CALL_COLUMNS = (*_NEW_CALL_COLUMNS, "last_error")
_FAIL_NEW_CALL = text(
    f"""
    WITH held AS (
        INSERT INTO call ({", ".join(_REFUSED_CALL_COLUMNS)}, finished_at)
        VALUES ({", ".join(f":{c}" for c in _REFUSED_CALL_COLUMNS)}, now())
        ON CONFLICT (call_id) DO NOTHING
        RETURNING call_id
    ), {_MOVES}, {OUTBOX}
    SELECT count(*) FROM held
    """
).bindparams(*_typed(_REFUSED_CALL_COLUMNS))

_WRITE_PROGRESS = Direct(
    text(
        f"""
    WITH held AS (
        UPDATE call SET ai_attempts = ai_attempts + :a_count,
                        last_error = COALESCE(:last_error, last_error),
                        transcript = COALESCE(:transcript, transcript), updated_at = now()
        WHERE call_id = :call_id AND lease_epoch = :epoch AND state = 'PROCESSING_AI'
        RETURNING call_id, generation
    ), {_ATTEMPTS}
    SELECT count(*) FROM held
    """
    )
)

_FINISH = Direct(
    text(
        f"""
    WITH held AS (
        UPDATE call SET state = :target, ai_attempts = ai_attempts + :a_count,
                        last_error = COALESCE(:last_error, last_error),
                        transcript = COALESCE(:transcript, transcript),
                        sentiment_label = :label, sentiment_score = :score,
                        conversation = COALESCE(:conversation, conversation),
                        finished_at = now(), updated_at = now()
        WHERE call_id = :call_id AND lease_epoch = :epoch AND state = :source
        RETURNING call_id, generation
    ), {_ATTEMPTS}, moves AS (
        INSERT INTO state_transition (call_id, from_state, to_state, at, reason)
        SELECT call_id, :source, :target, now(), :reason FROM held
    ), {OUTBOX}
    SELECT count(*) FROM held
    """
    ).bindparams(bindparam("conversation", type_=Call.__table__.c["conversation"].type))
)

# The attempts of a live call's windows (jobs/transcription.py): before its row exists, in its
# first generation; the row counts them when it is created (_LIVE_ATTEMPTS).
_LIVE_ATTEMPTS_INSERT = text(
    f"""
    INSERT INTO ai_attempt (call_id, step, generation, attempt, outcome, error, started_at,
                            duration_ms, window_label, live)
    SELECT :call_id, a.step, 0, a.n, a.outcome, a.error, a.started, a.ms, a.win, a.live
    FROM {_ATTEMPT_ARRAYS}
    """
)


def _attempt_arrays(attempts: Sequence[AttemptRecord]) -> dict[str, Any]:
    return {
        "a_count": len(attempts),
        "a_step": [a.step for a in attempts],
        "a_n": [a.attempt for a in attempts],
        "a_outcome": [a.outcome for a in attempts],
        "a_error": [a.error for a in attempts],
        "a_started": [a.started_at for a in attempts],
        "a_ms": [a.duration_ms for a in attempts],
        "a_window": [a.window for a in attempts],
        "a_live": [a.live for a in attempts],
        "last_error": next((a.error for a in reversed(attempts) if a.error), None),
    }


def _new_row(live: CallRecord, state: CallState) -> dict[str, Any]:
    values = {**flushed_columns(live), **_NEW_CALL_BOOKKEEPING}
    values["completed_at"] = live.completed_at or datetime.now(UTC)
    values["state"] = state.value
    return values


def _moves(
    live: CallRecord,
    completed_at: datetime,
    path: Sequence[tuple[CallState | None, CallState, str | None]],
    last_reason: str = "",
) -> dict[str, Any]:
    """The transitions of `path`, from the call's creation on: the reason of the completion is
    the call's own, a reason of None is `last_reason`."""
    completed = f"completed ({live.completion_reason or 'explicit'})"
    now = datetime.now(UTC)
    moments = [live.created_at, completed_at, *[now] * (len(path) - 2)]
    reasons = [
        completed if t is CallState.COMPLETED else (last_reason if r is None else r)
        for _, t, r in path
    ]
    return {
        "m_from": [s.value if s else None for s, _, _ in path],
        "m_to": [t.value for _, t, _ in path],
        "m_at": moments,
        "m_reason": reasons,
    }


async def flush_new_call(on: Executor, live: CallRecord, *, webhooks: Webhooks) -> Claim | None:
    """Create the call's row already claimed by this worker (epoch 1, PROCESSING_AI) with its
    transitions, and its `call.completed` webhooks. None if the row exists: a previous run
    flushed it."""
    values = _new_row(live, CallState.PROCESSING_AI)
    moves = _moves(live, values["completed_at"], FLUSH_PATH)
    params = {**values, **moves, **webhooks.params(EventType.COMPLETED)}
    del params["ai_attempts"]
    if not await _FLUSH_NEW_CALL.scalar(on, params):
        return None
    return Claim(live.call_id, 1, CallState.PROCESSING_AI, 0, None, {}, live.metadata)


async def fail_new_call(
    conn: AsyncConnection, live: CallRecord, reason: str, *, webhooks: Webhooks
) -> bool:
    """The row of a call whose flush PostgreSQL refused: FAILED with `reason`, with what Redis
    knew of the call, the path it took (REFUSED_PATH) and its `call.failed` webhooks. False if
    the row exists: an earlier run flushed the call (or failed it so, and it was replayed)."""
    values = {**_new_row(live, CallState.FAILED), "last_error": reason}
    moves = _moves(live, values["completed_at"], REFUSED_PATH, reason)
    announce = webhooks.params(EventType.FAILED)
    return bool(await conn.scalar(_FAIL_NEW_CALL, {**values, **moves, **announce}))


# The largest value of an `integer` column; Redis' counters have no such bound.
_INT4_MAX = 2**31 - 1


def storable(live: CallRecord) -> CallRecord:
    """The record with what PostgreSQL could refuse in it taken out, for the row of a call whose
    record itself was refused: its metadata (a client's JSON) dropped, and counters capped at
    their column's largest value (the API shows them as at least that many)."""
    columns = Call.__table__.c
    capped = {
        name: min(getattr(live, name), _INT4_MAX)
        for name, column in FLUSHED.items()
        if type(columns[column].type) is Integer and isinstance(getattr(live, name), int)
    }
    return live.model_copy(update={"metadata": None, **capped})


async def record_live_attempts(
    conn: AsyncConnection, call_id: str, attempts: Sequence[AttemptRecord]
) -> None:
    """Keep the AI attempts of a live call's windows (no row, no fence: nothing else writes
    them, and a window's utterances are stored once by db/transcripts.py)."""
    arrays = _attempt_arrays(attempts)
    del arrays["a_count"], arrays["last_error"]
    await conn.execute(_LIVE_ATTEMPTS_INSERT, {"call_id": call_id, **arrays})


async def write_progress(
    on: Executor, claim: Claim, attempts: Sequence[AttemptRecord], transcript: str | None
) -> bool:
    """Keep attempts (and the transcript) unless another worker took the call since."""
    params = {"call_id": claim.call_id, "epoch": claim.epoch, "transcript": transcript}
    return bool(await _WRITE_PROGRESS.scalar(on, {**params, **_attempt_arrays(attempts)}))


# The event a final state is announced as.
_ANNOUNCED = {CallState.ARCHIVED: EventType.ARCHIVED, CallState.FAILED: EventType.FAILED}


async def finish(
    on: Executor,
    claim: Claim,
    target: CallState,
    reason: str,
    attempts: Sequence[AttemptRecord],
    *,
    transcript: str | None = None,
    sentiment: tuple[str, float] | None = None,
    last_error: str | None = None,
    conversation: dict[str, Any] | None = None,
    webhooks: Webhooks,
) -> bool:
    """Move the call to its final state with its results and attempts, fenced by the epoch, and
    write its webhooks (`call.archived`, `call.failed`) with it. `last_error` (the failure
    reason) overrides the last attempt's error."""
    (source,) = sources_of(target)  # ARCHIVED and FAILED are reached from PROCESSING_AI only
    label, score = sentiment if sentiment is not None else (None, None)
    params = {
        "call_id": claim.call_id,
        "epoch": claim.epoch,
        "source": source.value,
        "target": target.value,
        "reason": reason,
        "transcript": transcript,
        "label": label,
        "score": score,
        "conversation": conversation,
        **webhooks.params(_ANNOUNCED[target]),
    }
    arrays = _attempt_arrays(attempts)
    if last_error is not None:
        arrays["last_error"] = last_error
    return bool(await _FINISH.scalar(on, {**params, **arrays}))
