"""A call's transcript at rest: the windows of each track that have been transcribed and the
utterances found in them. A window is written once: `store_window` takes the call's transcript
lock and stores only if the track's transcribed stretch still ends where the window starts, so
a live transcription and the call's final one racing for the same window store it once (the
loser's work is dropped, and it carries on from the new end)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from db.feed_events import Said
from db.outbox import Webhooks, announce_utterances

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:call_id, 17))")
_END = text(
    "SELECT coalesce(max(end_sample), 0) FROM transcript_window"
    " WHERE call_id = :call_id AND track = :track"
)
_ENDS = text(
    "SELECT track, max(end_sample) AS done FROM transcript_window WHERE call_id = :call_id"
    " GROUP BY track"
)
_WINDOW = text(
    "INSERT INTO transcript_window (call_id, track, start_sample, end_sample)"
    " VALUES (:call_id, :track, :start, :end)"
)
_UTTERANCE = text(
    "INSERT INTO utterance (call_id, track, start_s, end_s, text, sentiment_label,"
    " sentiment_score) VALUES (:call_id, :track, :start_s, :end_s, :text, :label, :score)"
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
    conn: AsyncConnection,
    call_id: str,
    track: int,
    start: int,
    end: int,
    utterances: Sequence[UtteranceRow],
    webhooks: Webhooks,
) -> bool:
    """Store the track's window [start, end) (samples) and its utterances, in the caller's
    transaction, with their `call.utterance` webhooks if `webhooks` wants them; False, storing
    nothing, if the track's transcribed stretch no longer ends at `start` (another run stored
    this window first)."""
    await conn.execute(_LOCK, {"call_id": call_id})
    done = await conn.scalar(_END, {"call_id": call_id, "track": track})
    if int(done or 0) != start:
        return False
    await conn.execute(_WINDOW, {"call_id": call_id, "track": track, "start": start, "end": end})
    if utterances:
        await conn.execute(
            _UTTERANCE,
            [
                {
                    "call_id": call_id,
                    "track": u.track,
                    "start_s": u.start_s,
                    "end_s": u.end_s,
                    "text": u.text,
                    "label": u.sentiment_label,
                    "score": u.sentiment_score,
                }
                for u in utterances
            ],
        )
        said = [
            Said.of(u.track, u.start_s, u.end_s, u.text, u.sentiment, webhooks.speakers)
            for u in utterances
        ]
        await announce_utterances(conn, call_id, said, webhooks)
    return True


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
