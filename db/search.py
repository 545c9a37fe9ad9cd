"""Full-text search over every stored utterance (utterance.search: a generated tsvector with a
GIN index, migration 0007): the calls whose utterances match, newest first and keyset-paged as
the list is, and each call's best few matches with where the match lies in their text.

`websearch_to_tsquery` reads any input (quotes, `or`, `-word`) without an error: words it cannot
use (stop words, punctuation) leave an empty query, which matches nothing. Each query is one
statement, whatever the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

# The configuration of the generated column (and of every query: they must agree).
CONFIG = "english"
MATCHES_PER_CALL = 3
# Marks ts_headline puts around each matching word: private-use characters, which a transcript
# does not hold (a text that does gets no offsets rather than wrong ones).
_START, _STOP = "\ue000", "\ue001"
_HEADLINE_OPTIONS = f"StartSel={_START}, StopSel={_STOP}, HighlightAll=true"


@dataclass(frozen=True, slots=True)
class UtteranceFilter:
    """What an utterance must be to match: any of them left None matches every utterance."""

    words: str | None = None  # websearch syntax
    track: int | None = None
    sentiment: str | None = None

    def params(self) -> dict[str, object]:
        return {"words": self.words, "track": self.track, "sentiment": self.sentiment}


@dataclass(frozen=True, slots=True)
class Match:
    call_id: str
    track: int
    start_s: float
    end_s: float
    text: str
    offsets: list[tuple[int, int]]  # [start, end) of each matching word, in characters


_MATCHING = f"""
    (CAST(:words AS text) IS NULL
        OR u.search @@ websearch_to_tsquery('{CONFIG}', CAST(:words AS text)))
    AND (CAST(:track AS smallint) IS NULL OR u.track = CAST(:track AS smallint))
    AND (CAST(:sentiment AS text) IS NULL OR u.sentiment_label = CAST(:sentiment AS text))
"""

_CALLS = text(
    f"""
    SELECT c.* FROM call c
    WHERE EXISTS (SELECT 1 FROM utterance u WHERE u.call_id = c.call_id AND {_MATCHING})
      AND (CAST(:state AS text) IS NULL OR c.state = CAST(:state AS text))
      AND (CAST(:since AS timestamptz) IS NULL OR c.created_at >= CAST(:since AS timestamptz))
      AND (CAST(:until AS timestamptz) IS NULL OR c.created_at < CAST(:until AS timestamptz))
      AND (CAST(:before_at AS timestamptz) IS NULL
           OR (c.created_at, c.call_id)
              < (CAST(:before_at AS timestamptz), CAST(:before_id AS text)))
    ORDER BY c.created_at DESC, c.call_id DESC
    LIMIT :limit
    """
)

_MATCHES = text(
    f"""
    SELECT call_id, track, start_s, end_s, text, marked FROM (
        SELECT u.call_id, u.track, u.start_s, u.end_s, u.text,
               CASE WHEN CAST(:words AS text) IS NULL THEN NULL
                    ELSE ts_headline('{CONFIG}', u.text,
                                     websearch_to_tsquery('{CONFIG}', CAST(:words AS text)),
                                     :options) END AS marked,
               row_number() OVER (
                   PARTITION BY u.call_id
                   ORDER BY CASE WHEN CAST(:words AS text) IS NULL THEN 0
                                 ELSE ts_rank(u.search, websearch_to_tsquery('{CONFIG}',
                                                                    CAST(:words AS text)))
                            END DESC,
                            u.start_s, u.track, u.id
               ) AS n
        FROM utterance u
        WHERE u.call_id = ANY(CAST(:ids AS text[])) AND {_MATCHING}
    ) ranked
    WHERE n <= :per_call
    ORDER BY call_id, start_s, track
    """
)


def offsets(original: str, marked: str | None) -> list[tuple[int, int]]:
    """Where the marks of ts_headline's `marked` lie in `original` ([start, end) characters);
    none if the text is not `original` once unmarked (it held a mark character itself)."""
    if marked is None:
        return []
    found: list[tuple[int, int]] = []
    plain: list[str] = []
    start = 0
    for char in marked:
        if char == _START:
            start = len(plain)
        elif char == _STOP:
            found.append((start, len(plain)))
        else:
            plain.append(char)
    return found if "".join(plain) == original else []


async def calls_matching(
    session: AsyncSession,
    wanted: UtteranceFilter,
    state: str | None,
    since: datetime | None,
    until: datetime | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> Sequence[Row[Any]]:
    """The `call` rows (db.record.from_row reads them) with an utterance `wanted` matches."""
    params = {
        **wanted.params(),
        "state": state,
        "since": since,
        "until": until,
        "before_at": before[0] if before else None,
        "before_id": before[1] if before else None,
        "limit": limit,
    }
    return (await session.execute(_CALLS, params)).all()


async def best_matches(
    session: AsyncSession, wanted: UtteranceFilter, call_ids: Sequence[str]
) -> list[Match]:
    """Each call's best MATCHES_PER_CALL utterances (by rank, then time), in time order."""
    params = {
        **wanted.params(),
        "ids": list(call_ids),
        "options": _HEADLINE_OPTIONS,
        "per_call": MATCHES_PER_CALL,
    }
    rows = await session.execute(_MATCHES, params)
    return [
        Match(r.call_id, int(r.track), float(r.start_s), float(r.end_s), r.text,
              offsets(r.text, r.marked))
        for r in rows
    ]  # fmt: skip
