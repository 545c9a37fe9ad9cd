"""A call's status as the supervisor sees it: PostgreSQL for flushed calls, Redis for live ones."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi.exceptions import RequestValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.errors import CallErased
from db import calls, erasures
from db.live import LiveCalls
from db.models import Call
from db.outages import POSTGRES_OUTAGE
from db.record import CallRecord, from_row, with_retention
from db.states import CallState
from service.schemas import CallPage
from settings import Settings

log = logging.getLogger(__name__)

# States a call can have while it exists only in Redis. A PostgreSQL row starts at
# PROCESSING_AI (the worker's flush claims it); it is COMPLETED only once a FAILED call is replayed.
LIVE_STATES = frozenset({CallState.IN_PROGRESS, CallState.COMPLETED})


async def refuse_erased(session: AsyncSession, call_id: str) -> None:
    """Every read of a call whose erasure was asked for (running or done) is a 404 call_erased:
    the ledger (db/erasures.py) says so, whatever is still left of it."""
    erasure = await erasures.erased(session, call_id)
    if erasure is not None:
        raise _erased(call_id, erasure.reason, erasure.requested_at)


def _erased(call_id: str, reason: str, requested_at: datetime) -> CallErased:
    when = requested_at.isoformat(timespec="seconds")
    return CallErased(
        f"call {call_id} was erased ({erasures.Reason(reason).value}, asked at {when})"
    )


async def call_status(
    source: AsyncSession | AsyncEngine, live: LiveCalls, call_id: str, missing_cap: int
) -> CallRecord | None:
    """PostgreSQL's record if the call was flushed, else Redis' live view; CallErased for an
    erased call. While PostgreSQL is down, calls that Redis still holds stay visible; only the
    others get a 503. `source`: a route's session, or the API's reader (calls.status_row)."""
    try:
        row = await calls.status_row(source, call_id)  # refuse_erased's rule, in one statement
    except POSTGRES_OUTAGE as exc:
        found = await live.get(call_id, missing_cap)
        if found is None:
            raise
        log.warning("PostgreSQL unavailable (%r); answering %s from Redis", exc, call_id)
        return found
    if row.erasure_reason is not None:
        raise _erased(call_id, row.erasure_reason, row.erasure_requested_at)
    if row.call_id is not None:
        return from_row(row)
    return await live.get(call_id, missing_cap)


def retained(call: CallRecord, settings: Settings) -> CallRecord:
    """The record with when retention will erase it (RETENTION_DAYS, AUDIO_RETENTION_DAYS)."""
    return with_retention(call, settings.retention_days, settings.audio_retention_days)


def encode_cursor(created_at: datetime, call_id: str) -> str:
    raw = json.dumps([_micros(created_at), call_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        micros, call_id = json.loads(raw)
        if not isinstance(call_id, str) or "\x00" in call_id:
            raise ValueError("not a call id")  # PostgreSQL text cannot hold NUL
        return datetime.fromtimestamp(int(micros) / 1e6, tz=UTC), call_id
    except (binascii.Error, ValueError, TypeError, OverflowError, OSError, RecursionError) as exc:
        problem = {
            "loc": ("query", "cursor"),
            "msg": "cursor is not one this API returned",
            "type": "value_error",
        }
        raise RequestValidationError([problem]) from exc


def _micros(moment: datetime) -> int:
    return round(moment.timestamp() * 1e6)


def _sort_key(status: CallRecord) -> tuple[int, str]:
    return _micros(status.created_at), status.call_id


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Calls created in [since, until); either end open when None."""

    since: datetime | None = None
    until: datetime | None = None

    def holds(self, moment: datetime) -> bool:
        return (self.since is None or moment >= self.since) and (
            self.until is None or moment < self.until
        )


async def list_calls(
    session: AsyncSession,
    live: LiveCalls,
    state: CallState | None,
    cursor: str | None,
    limit: int,
    missing_cap: int,
    created: TimeRange = TimeRange(),  # frozen: one shared default is safe
) -> CallPage:
    """Newest first across both stores, keyset-paginated on (created_at, call_id)."""
    before = decode_cursor(cursor) if cursor else None
    rows = await calls.list_calls(session, state, before, limit + 1, created.since, created.until)
    items = [from_row(r) for r in rows]
    if state is None or state in LIVE_STATES:
        found = await _live_items(session, live, state, before, limit + 1, missing_cap, created)
        items += found
    items.sort(key=_sort_key, reverse=True)
    page = items[:limit]
    next_cursor = None
    if len(items) > limit:
        next_cursor = encode_cursor(page[-1].created_at, page[-1].call_id)
    # A call whose erasure runs still has rows and keys until its job is done: not listed.
    gone = await erasures.erased_among(session, [c.call_id for c in page])
    page = [c for c in page if c.call_id not in gone]
    return CallPage(items=page, next_cursor=next_cursor)


async def _live_items(
    session: AsyncSession,
    live: LiveCalls,
    state: CallState | None,
    before: tuple[datetime, str] | None,
    wanted: int,
    missing_cap: int,
    created: TimeRange,
) -> list[CallRecord]:
    found: list[CallRecord] = []
    keyset = (before[0].timestamp(), before[1]) if before else None
    while len(found) < wanted:
        page = await live.unflushed_page(keyset, 200)
        if not page:
            break
        keyset = (page[-1][1], page[-1][0])
        records = [
            c for c in await live.get_many([call_id for call_id, _ in page], missing_cap) if c
        ]
        flushed = set(
            await session.scalars(
                select(Call.call_id).where(Call.call_id.in_([r.call_id for r in records]))
            )
        )
        found += [
            r
            for r in records
            if r.call_id not in flushed
            and (state is None or r.state == state)
            and created.holds(r.created_at)
        ]
    if before is not None:
        bound = (_micros(before[0]), before[1])
        found = [s for s in found if _sort_key(s) < bound]
    return found[:wanted]
