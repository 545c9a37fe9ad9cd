"""A call's status as the supervisor sees it: PostgreSQL for flushed calls, Redis for live ones."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from datetime import UTC, datetime

from fastapi.exceptions import RequestValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db import calls
from db.models import Call
from db.states import CallState
from db.streams import CallStreams, LiveCall
from service.errors import POSTGRES_OUTAGE
from service.schemas import CallPage, CallStatus, SentimentOut

log = logging.getLogger(__name__)

# States a call can have while it exists only in Redis (PostgreSQL rows start at COMPLETED).
LIVE_STATES = frozenset({CallState.IN_PROGRESS, CallState.COMPLETED})


def from_row(call: Call) -> CallStatus:
    sentiment = None
    if call.sentiment_label is not None and call.sentiment_score is not None:
        sentiment = SentimentOut(label=call.sentiment_label, score=call.sentiment_score)
    return CallStatus(
        call_id=call.call_id,
        state=call.state,
        packets_received=call.packets_received,
        first_sequence=call.first_sequence,
        last_sequence=call.last_sequence,
        missing_sequences=list(call.missing_sequences),
        missing_count=call.missing_count,
        duplicate_packets=call.duplicate_packets,
        out_of_order_packets=call.out_of_order_packets,
        ai_attempts=call.ai_attempts,
        last_error=call.last_error,
        transcript=call.transcript,
        sentiment=sentiment,
        completion_reason=call.completion_reason,
        metadata=call.start_metadata,
        created_at=call.created_at,
        completed_at=call.completed_at,
        finished_at=call.finished_at,
    )


def from_live(live: LiveCall, missing: list[int]) -> CallStatus:
    return CallStatus(
        call_id=live.call_id,
        state=live.state,
        packets_received=live.packets_received,
        first_sequence=live.first_sequence,
        last_sequence=live.last_sequence,
        missing_sequences=missing,
        missing_count=live.missing_count,
        duplicate_packets=live.duplicate_packets,
        out_of_order_packets=live.out_of_order_packets,
        ai_attempts=0,
        last_error=None,
        transcript=None,
        sentiment=None,
        completion_reason=live.completion_reason,
        metadata=live.metadata,
        created_at=calls.epoch_to_datetime(live.created_at),
        completed_at=calls.epoch_to_datetime(live.completed_at) if live.completed_at else None,
        finished_at=None,
    )


async def call_status(
    session: AsyncSession, streams: CallStreams, call_id: str, missing_cap: int
) -> CallStatus | None:
    """PostgreSQL's record if the call was flushed, else Redis' live view. While PostgreSQL is
    down, calls that Redis still holds stay visible; only the others get a 503."""
    try:
        row = await calls.get_call(session, call_id)
    except POSTGRES_OUTAGE as exc:
        live = await streams.live_call(call_id)
        if live is None:
            raise
        log.warning("PostgreSQL unavailable (%r); answering %s from Redis", exc, call_id)
        row = None
    else:
        if row is not None:
            return from_row(row)
        live = await streams.live_call(call_id)
    if live is None:
        return None
    return from_live(live, await streams.missing_sequences(live, missing_cap))


def encode_cursor(created_at: datetime, call_id: str) -> str:
    raw = json.dumps([_micros(created_at), call_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        micros, call_id = json.loads(raw)
        return datetime.fromtimestamp(int(micros) / 1e6, tz=UTC), str(call_id)
    except (binascii.Error, ValueError, TypeError, OverflowError, OSError) as exc:
        problem = {
            "loc": ("query", "cursor"),
            "msg": "cursor is not one this API returned",
            "type": "value_error",
        }
        raise RequestValidationError([problem]) from exc


def _micros(moment: datetime) -> int:
    return round(moment.timestamp() * 1e6)


def _sort_key(status: CallStatus) -> tuple[int, str]:
    return _micros(status.created_at), status.call_id


async def list_calls(
    session: AsyncSession,
    streams: CallStreams,
    state: CallState | None,
    cursor: str | None,
    limit: int,
    missing_cap: int,
) -> CallPage:
    """Newest first across both stores, keyset-paginated on (created_at, call_id)."""
    before = decode_cursor(cursor) if cursor else None
    items = [from_row(r) for r in await calls.list_calls(session, state, before, limit + 1)]
    if state is None or state in LIVE_STATES:
        items += await _live_items(session, streams, state, before, limit + 1, missing_cap)
    items.sort(key=_sort_key, reverse=True)
    page = items[:limit]
    next_cursor = None
    if len(items) > limit:
        next_cursor = encode_cursor(page[-1].created_at, page[-1].call_id)
    return CallPage(items=page, next_cursor=next_cursor)


async def _live_items(
    session: AsyncSession,
    streams: CallStreams,
    state: CallState | None,
    before: tuple[datetime, str] | None,
    wanted: int,
    missing_cap: int,
) -> list[CallStatus]:
    found: list[CallStatus] = []
    keyset = (before[0].timestamp(), before[1]) if before else None
    while len(found) < wanted:
        page = await streams.unflushed_page(keyset, 200)
        if not page:
            break
        keyset = (page[-1][1], page[-1][0])
        lives = [c for c in await streams.live_calls([call_id for call_id, _ in page]) if c]
        flushed = set(
            await session.scalars(
                select(Call.call_id).where(Call.call_id.in_([live.call_id for live in lives]))
            )
        )
        for live in lives:
            if live.call_id in flushed or (state is not None and live.state != state):
                continue
            found.append(from_live(live, await streams.missing_sequences(live, missing_cap)))
    if before is not None:
        bound = (_micros(before[0]), before[1])
        found = [s for s in found if _sort_key(s) < bound]
    return found[:wanted]
