"""`GET /v1/calls` with `q`, `speaker` or `sentiment`: the calls whose stored utterances match
(db/search.py), keyset-paged as the list is, each with its best matches. Only calls flushed to
PostgreSQL: a live call's utterances are searchable once it has a row (it is then PROCESSING_AI)."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy.ext.asyncio import AsyncSession

from db import erasures, search
from db.packets import TRACKS
from db.record import from_row
from db.states import CallState
from service.schemas import CallFound, CallSearchPage, UtteranceMatch
from service.views import TimeRange, decode_cursor, encode_cursor, retained
from settings import Settings

# A search is words a person types: this many characters is more than any phrase needs.
MAX_QUERY_CHARS = 1000


def search_words(q: str | None) -> str | None:
    """`q` as the search reads it: PostgreSQL text holds no NUL (a space does the same job for
    a word search); a blank one is no search at all."""
    if q is None:
        return None
    words = q.replace("\x00", " ").strip()
    return words or None


async def search_calls(
    session: AsyncSession,
    names: dict[int, str],
    wanted: search.UtteranceFilter,
    state: CallState | None,
    created: TimeRange,
    cursor: str | None,
    limit: int,
    settings: Settings,
) -> CallSearchPage:
    before = decode_cursor(cursor) if cursor else None
    rows = await search.calls_matching(
        session,
        wanted,
        state.value if state else None,
        created.since,
        created.until,
        before,
        limit + 1,
    )
    page = [from_row(r) for r in rows[:limit]]
    by_call: dict[str, list[UtteranceMatch]] = defaultdict(list)
    for m in await search.best_matches(session, wanted, [c.call_id for c in page]):
        by_call[m.call_id].append(
            UtteranceMatch(
                speaker=names[m.track],
                track=TRACKS[m.track],
                start_s=m.start_s,
                end_s=m.end_s,
                text=m.text,
                offsets=m.offsets,
            )
        )
    # A call whose erasure runs still has rows until its job is done: not found.
    gone = await erasures.erased_among(session, [c.call_id for c in page])
    items = [
        CallFound(**retained(c, settings).model_dump(), matches=by_call[c.call_id])
        for c in page
        if c.call_id not in gone
    ]
    last = page[-1] if page and len(rows) > limit else None
    return CallSearchPage(
        items=items, next_cursor=encode_cursor(last.created_at, last.call_id) if last else None
    )
