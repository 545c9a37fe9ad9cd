"""Two tracks' windows of a call heard in one pass of the local model: Whisper's encoder hears
30 s at a time whatever it is given (shorter audio is padded), so two windows of 15 s, one a
party, cost one encoder pass instead of two, and each is heard with 30 s of speech around it
instead of 15 s of speech and 15 of padding. The windows are joined with a short silence between
them, heard with word times, and every word goes back to the window it was said in (by its
middle), its times back on that window's own timeline.

The Packer (on the worker's event loop) pairs the pieces of one call that come to the pool
together (the live pass and the final one transcribe both tracks' windows at once); hear_packed
runs in a pool process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.audio import Samples
from jobs.whisper import Segment, transcribe_pcm

# Whisper's window: two pieces are packed only if they fit in one, with the silence between.
PACK_S = 30.0
# Between the two pieces: longer than a pause between phrases (jobs/whisper.py's PAUSE_S), so
# Whisper's segments and the cut at pauses end at the join; shorter than the voice-activity
# filter's smallest silence (2 s), which keeps it.
GAP_S = 0.6
# How long a piece with room for another waits for its partner (the other track's piece,
# asked for at the same time but read from PostgreSQL a moment later), then goes alone.
WAIT_S = 0.3
# A piece waits for a partner only if one of at least this long would fit beside it.
PARTNER_MIN_S = 2.0

Run = Callable[..., Awaitable[Any]]  # LocalAI._run: a function and its arguments, in the pool


def hear_packed(
    pieces: list[Samples], rate: int, deadline: float | None = None
) -> list[list[Segment]]:
    """Each piece's segments (with their words' times, on the piece's own timeline), from one
    transcription of the pieces joined with GAP_S of silence between them."""
    gap = np.zeros(int(GAP_S * rate), dtype=np.int16)
    starts, at = [], 0
    for piece in pieces:
        starts.append(at / rate)
        at += len(piece) + len(gap)
    joined = np.concatenate([x for piece in pieces for x in (piece, gap)][:-1])
    found = transcribe_pcm(joined, rate, words=True, deadline=deadline)
    # Where each piece's share of the joined audio ends: the middle of the silence after it.
    ends = [
        start + len(piece) / rate + GAP_S / 2 for start, piece in zip(starts, pieces, strict=True)
    ]
    heard: list[list[Segment]] = [[] for _ in pieces]
    for segment in found:
        for n, part in _parts(segment, ends):
            heard[n].append(_moved(part, starts[n], len(pieces[n]) / rate))
    return heard


def _which(at_s: float, ends: list[float]) -> int:
    return next((n for n, end in enumerate(ends) if at_s < end), len(ends) - 1)


def _parts(segment: Segment, ends: list[float]) -> list[tuple[int, Segment]]:
    """The segment as said in each piece: its words split by their middles (a segment without
    word times goes whole to the piece its middle is in)."""
    if not segment.words:
        return [(_which((segment.start_s + segment.end_s) / 2, ends), segment)]
    parts: dict[int, list[tuple[float, float, str]]] = {}
    for word in segment.words:
        parts.setdefault(_which((word[0] + word[1]) / 2, ends), []).append(word)
    if len(parts) == 1:
        return [(next(iter(parts)), segment)]
    return [
        (n, Segment(words[0][0], words[-1][1], " ".join(w[2] for w in words), tuple(words)))
        for n, words in sorted(parts.items())
    ]


def _moved(segment: Segment, start_s: float, length_s: float) -> Segment:
    """The segment on its piece's timeline (clamped to the piece)."""

    def on(t: float) -> float:
        return round(min(max(t - start_s, 0.0), length_s), 2)

    words = tuple((on(a), on(b), text) for a, b, text in segment.words)
    return Segment(on(segment.start_s), on(segment.end_s), segment.text, words)


@dataclass
class _Waiting:
    piece: Samples
    rate: int
    deadline: float | None
    taken: asyncio.Future[asyncio.Future[list[list[Segment]]]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def seconds(self) -> float:
        return len(self.piece) / self.rate


class Packer:
    """Pairs the pieces of a call that come to the pool together: the second of two pieces that
    fit in one window (PACK_S) takes the first, waiting for it (at most WAIT_S), and one pass
    hears both; a piece that finds no partner is heard alone."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._waiting: dict[str, _Waiting] = {}

    async def heard(
        self, call_id: str, piece: Samples, rate: int, deadline: float | None
    ) -> list[Segment]:
        seconds = len(piece) / rate
        waiting = self._waiting.get(call_id)
        if waiting is not None and waiting.rate == rate and _fit(waiting.seconds, seconds):
            del self._waiting[call_id]
            later = _later(deadline, waiting.deadline)
            job = asyncio.ensure_future(self._run(hear_packed, [waiting.piece, piece], rate, later))
            job.add_done_callback(_retrieved)
            waiting.taken.set_result(job)
            both: list[list[Segment]] = await asyncio.shield(job)
            return both[1]
        if waiting is not None or not _fit(seconds, PARTNER_MIN_S):
            found: list[Segment] = await self._run(transcribe_pcm, piece, rate, True, deadline)
            return found
        return await self._wait_for_partner(call_id, _Waiting(piece, rate, deadline))

    async def _wait_for_partner(self, call_id: str, mine: _Waiting) -> list[Segment]:
        self._waiting[call_id] = mine
        try:
            job = await asyncio.wait_for(asyncio.shield(mine.taken), WAIT_S)
        except TimeoutError:
            if not mine.taken.done():  # nobody came: heard alone
                found: list[Segment] = await self._run(
                    transcribe_pcm, mine.piece, mine.rate, True, mine.deadline
                )
                return found
            job = mine.taken.result()  # taken as the wait ended
        finally:
            if self._waiting.get(call_id) is mine:
                del self._waiting[call_id]
        mine_too: list[list[Segment]] = await asyncio.shield(job)
        return mine_too[0]


def _later(a: float | None, b: float | None) -> float | None:
    """The later of two attempts' deadlines (None: none): a shared pass stops for neither."""
    return None if a is None or b is None else max(a, b)


def _fit(first_s: float, second_s: float) -> bool:
    return first_s + GAP_S + second_s <= PACK_S


def _retrieved(job: asyncio.Future[Any]) -> None:
    """A shared pass's failure is its waiters' to raise; if both left (their attempts timed
    out), it is read here, so that it is not reported as never retrieved."""
    if not job.cancelled():
        job.exception()
