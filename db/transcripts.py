"""A call's transcript at rest: the windows of each track that have been transcribed and the
utterances found in them. A window is written once: `store_window` stores it only if the track's
transcribed stretch ends where the window starts, so a live transcription and the call's final
one racing for the same window store it once (the loser's work is dropped, and it carries on
from the new end).

One statement, one round trip: the check, the window, its utterances and their webhooks. Two
racing statements may both see the stretch end at the window's start (each its own snapshot),
but then both windows start there, and the window's key (call, track, start) lets only the first
in: the other waits for it and stores nothing. A stale snapshot cannot let a window in anywhere
else: the track's windows follow each other from 0, so where a stale view's stretch ends, a newer
window starts, and that key is taken."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from db.direct import Direct, Executor
from db.feed_events import Said
from db.outbox import UTTERANCE_OUTBOX, Webhooks, utterance_params

_ENDS = text(
    "SELECT track, max(end_sample) AS done FROM transcript_window WHERE call_id = :call_id"
    " GROUP BY track"
)
_STORE_WINDOW = Direct(
    text(
        f"""
    WITH held AS (
        INSERT INTO transcript_window (call_id, track, start_sample, end_sample)
        SELECT :call_id, :track, :start, :end
        WHERE (SELECT coalesce(max(end_sample), 0) FROM transcript_window
               WHERE call_id = :call_id AND track = :track) = :start
        ON CONFLICT DO NOTHING
        RETURNING call_id
    ), said AS (
        INSERT INTO utterance (call_id, track, start_s, end_s, text, sentiment_label,
                               sentiment_score)
        SELECT held.call_id, u.track, u.start_s, u.end_s, u.text, u.label, u.score
        FROM held, unnest(CAST(:u_track AS smallint[]), CAST(:u_start AS float8[]),
                          CAST(:u_end AS float8[]), CAST(:u_text AS text[]),
                          CAST(:u_label AS text[]), CAST(:u_score AS float8[]))
                   WITH ORDINALITY AS u(track, start_s, end_s, text, label, score, n)
        ORDER BY u.n
    ), {UTTERANCE_OUTBOX}
    SELECT count(*) FROM held
    """
    )
)
_UTTERANCES = text(
    "SELECT track, start_s, end_s, text, sentiment_label, sentiment_score FROM utterance"
    " WHERE call_id = :call_id ORDER BY start_s, track, id"
)


@dataclass(frozen=True, slots=True)
class UtteranceRow:
    track: int
    start_s: float
    end_s: float
    text: str
    sentiment_label: str
    sentiment_score: float

    @property
    def sentiment(self) -> tuple[str, float]:
        return self.sentiment_label, self.sentiment_score


async def store_window(
    on: Executor,
    call_id: str,
    track: int,
    start: int,
    end: int,
    utterances: Sequence[UtteranceRow],
    webhooks: Webhooks,
) -> bool:
    """Store the track's window [start, end) (samples) and its utterances, with their
    `call.utterance` webhooks if `webhooks` wants them, in one statement; False, storing
    nothing, if the track's transcribed stretch does not end at `start` (another run stored
    this window first). `on`: the pool (the statement alone) or the caller's connection."""
    said = [
        Said.of(u.track, u.start_s, u.end_s, u.text, u.sentiment, webhooks.speakers)
        for u in (utterances if webhooks.endpoints else ())
    ]
    params = {
        "call_id": call_id,
        "track": track,
        "start": start,
        "end": end,
        "u_track": [u.track for u in utterances],
        "u_start": [u.start_s for u in utterances],
        "u_end": [u.end_s for u in utterances],
        "u_text": [u.text for u in utterances],
        "u_label": [u.sentiment_label for u in utterances],
        "u_score": [u.sentiment_score for u in utterances],
        **utterance_params(call_id, said, webhooks),
    }
    return bool(await _STORE_WINDOW.scalar(on, params))


async def transcribed_to(session: AsyncSession, call_id: str) -> dict[int, int]:
    """Where each track's transcribed stretch ends (samples on its own timeline)."""
    rows = await session.execute(_ENDS, {"call_id": call_id})
    return {int(r.track): int(r.done) for r in rows}


async def utterances(session: AsyncSession, call_id: str) -> list[UtteranceRow]:
    rows = await session.execute(_UTTERANCES, {"call_id": call_id})
    return [
        UtteranceRow(
            int(r.track),
            float(r.start_s),
            float(r.end_s),
            str(r.text),
            str(r.sentiment_label),
            float(r.sentiment_score),
        )
        for r in rows
    ]
