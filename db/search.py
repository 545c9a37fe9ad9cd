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

from sqlalchemy import Row, TextClause, text
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

    def where(self) -> str:
        """The conditions on `u` (utterance), only those asked for: a statement per shape, so
        that each gets a plan of its own (`:x IS NULL OR ...` would hide the GIN index from a
        generic plan)."""
        found = ["TRUE"]
        if self.words is not None:
            found.append(f"u.search @@ {_QUERY}")
        if self.track is not None:
            found.append("u.track = :track")
        if self.sentiment is not None:
            found.append("u.sentiment_label = :sentiment")
        return " AND ".join(found)

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


_QUERY = f"websearch_to_tsquery('{CONFIG}', CAST(:words AS text))"


def _calls_statement(wanted: UtteranceFilter, on_call: list[str]) -> TextClause:
    return text(
        f"""
        SELECT c.* FROM call c
        WHERE EXISTS (SELECT 1 FROM utterance u WHERE u.call_id = c.call_id AND {wanted.where()})
          AND {" AND ".join(on_call or ["TRUE"])}
        ORDER BY c.created_at DESC, c.call_id DESC
        LIMIT :limit
        """
    )


def _matches_statement(wanted: UtteranceFilter) -> TextClause:
    words = wanted.words is not None
    marked = f"ts_headline('{CONFIG}', u.text, {_QUERY}, :options)" if words else "NULL"
    rank = f"ts_rank(u.search, {_QUERY}) DESC, " if words else ""
    return text(
        f"""
        SELECT call_id, track, start_s, end_s, text, marked FROM (
            SELECT u.call_id, u.track, u.start_s, u.end_s, u.text, {marked} AS marked,
                   row_number() OVER (
                       PARTITION BY u.call_id ORDER BY {rank}u.start_s, u.track, u.id
                   ) AS n
            FROM utterance u
            WHERE u.call_id = ANY(CAST(:ids AS text[])) AND {wanted.where()}
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
    on_call: list[str] = []
    params: dict[str, object] = {**wanted.params(), "limit": limit}
    if state is not None:
        on_call.append("c.state = :state")
        params["state"] = state
    if since is not None:
        on_call.append("c.created_at >= :since")
        params["since"] = since
    if until is not None:
        on_call.append("c.created_at < :until")
        params["until"] = until
    if before is not None:
        on_call.append("(c.created_at, c.call_id) < (:before_at, :before_id)")
        params["before_at"], params["before_id"] = before
    return (await session.execute(_calls_statement(wanted, on_call), _used(params))).all()


def _used(params: dict[str, object]) -> dict[str, object]:
    """The parameters a statement names: None values of filters not asked for are left out."""
    return {k: v for k, v in params.items() if v is not None}


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
    if wanted.words is None:
        del params["options"]
    rows = await session.execute(_matches_statement(wanted), _used(params))
    return [
        Match(r.call_id, int(r.track), float(r.start_s), float(r.end_s), r.text,
              offsets(r.text, r.marked))
        for r in rows
    ]  # fmt: skip
