"""A call's unflushed tail into PostgreSQL as segments: while the call goes on (the ingest script
asks for a segment every SEGMENT_SECONDS of audio, or LOCAL_WINDOW_SECONDS if set, local model:
Settings.live_flush_seconds; jobs/queue.py's flush_segment job), and once
more at its end (jobs/flushing.py), so that Redis holds about a segment of each live call and a
finished call's last flush is one segment's work.

Each round reads a page of the stream, builds what is new in it as the call's next segment (what
an earlier round stored is skipped) and stores it in one statement (db/segments.py's
plan_segment and store_segment: a read, then the insert, two round trips and no transaction);
with an object store its bytes are PUT between the two (put_objects: a slow store holds no
connection and does not hold up the call's other flushes, its final one included); the plan is
made again if another flusher stored that segment first; and only then trims the stream up to
what PostgreSQL holds
(db/lua/segment_done.lua). A worker that dies between the commit and the trim leaves entries that
the next round finds stored and trims; one that dies before the commit leaves them to be stored
by the next round (and, with a store, perhaps an object no row names: an erasure deletes the
call's objects by their prefix): nothing is lost, nothing is stored twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from core.audio import AudioFormat, UnsupportedAudio, parse_format
from core.audio_redaction import mute_late
from core.logs import about
from core.recording import build_rows, call_format
from db.feed_events import SegmentEvent
from db.keys import call_keys
from db.packets import StoredPacket
from db.segments import (
    NONE_TRIMMED,
    TEXT,
    Build,
    Planned,
    SegmentHead,
    SegmentRow,
    Stored,
    head_of,
    highest_sequences,
    plan_segment,
    put_objects,
    store_segment,
)
from db.states import CallState
from jobs.queue import enqueue_live_transcription
from jobs.resources import WorkerResources

log = logging.getLogger(__name__)

SEGMENT_PAGE = 6000  # stream entries a round reads: two tracks of 60 s of 20 ms frames
# A round's data, whatever its packets' sizes: 6,000 frames of 20 ms are 1.3 MB of base64, but
# 6,000 packets of 64 KB would be 390 MB. A round stops at this much; the rest is the next
# segment's, so a stored row holds at most about this (decoded, 3/4 of it).
SEGMENT_BYTES = 8 * 1024 * 1024
FIRST_PAGE = 500  # entries a worker reads with the call's lease: the rest comes by SEGMENT_BYTES
# A page is planned again each time another flusher stored a segment of the call between the
# plan's read and its insert: each such round is another flusher's progress, so a few suffice.
STORE_ROUNDS = 8


class FlushRace(RuntimeError):
    """Other flushers kept storing the call's segments first (STORE_ROUNDS times)."""


@dataclass
class Flushed:
    """What a flush of the tail stored; with `hold_last`, the last page's trim is left to the
    caller (the final flush makes it one step with its own: FlushSource.segment_done)."""

    segments: int = 0
    packets: int = 0
    # With `hold_last`: the heads of every segment of the call, when this flush stored them all
    # (its first included, none by another flusher); None otherwise.
    heads: list[SegmentHead] | None = None
    through: tuple[int, int] | None = None  # the untrimmed page's end; None: nothing to trim
    events: list[dict[str, Any]] = field(default_factory=list)  # its segment's, to publish


def _format(metadata: dict[str, Any] | None, default: str) -> tuple[AudioFormat | None, bool]:
    """The call's format, or None (the rows keep the packets' text; the AI says why later)."""
    try:
        return call_format(metadata, default)
    except UnsupportedAudio:
        return None, False


def segment_event(call_id: str, segment: int, rows: list[SegmentRow], state: str) -> dict[str, Any]:
    seconds = 0.0  # of the longer track's audio; 0 when the rows hold text
    for row in rows:
        if row.encoding != TEXT:
            fmt = parse_format(row.encoding)
            seconds = max(seconds, sum(row.sizes) / fmt.sample_bytes / fmt.rate)
    return SegmentEvent(
        call_id=call_id,
        state=CallState(state),
        segment=segment,
        packets=sum(len(r.sequences) for r in rows),
        seconds=round(seconds, 3),
    ).body()


async def flush_tail(
    res: WorkerResources,
    call_id: str,
    metadata: dict[str, Any] | None,
    first_page: tuple[list[StoredPacket], bool] | None = None,
    state: str = "IN_PROGRESS",
    hold_last: bool = False,
    none_trimmed: bool = False,
) -> Flushed:
    """Store every entry the call's stream holds now, a page a segment. `first_page`: the first
    page, if the caller read it already, and whether there is more after it. `hold_last`: leave
    the last page's trim (and its event) to the caller, in Flushed. `none_trimmed`: the caller
    read in the call's hash that no segment's entries ever left its stream (seg_trimmed), so the
    first page is planned as its first segment without a read (db/segments.py's NONE_TRIMMED)."""
    fmt, said = _format(metadata, res.settings.packet_audio_encoding)
    done = Flushed(heads=[] if hold_last else None)
    page, more = first_page if first_page is not None else (None, True)
    after: tuple[int, int] | None = None
    while True:
        if page is None:
            page, more = await res.flush.page(call_id, SEGMENT_PAGE, SEGMENT_BYTES, after)
        else:  # the caller's first page (a few entries): filled up to the same bounds
            page, more = _within_bytes(page, more)
            size = sum(len(p.data) for p in page)
            if more and page and len(page) < SEGMENT_PAGE:
                rest, more = await res.flush.page(
                    call_id, SEGMENT_PAGE - len(page), SEGMENT_BYTES, page[-1].entry, size
                )
                page = [*page, *rest]
        if not page:
            if not done.segments:  # an empty tail: the call's segments are others' flushes
                done.heads = None
            return done
        stored = await _store(res, call_id, page, fmt, said, none_trimmed and not done.segments)
        events = []
        if stored.segment is not None:
            events.append(segment_event(call_id, stored.segment, list(stored.rows), state))
            done.heads = _known(done, stored)
            done.segments += 1
            done.packets += events[0]["packets"]
        else:
            done.heads = None  # another flusher stored these entries
        if not more and hold_last:
            done.through, done.events = stored.through, events
            return done
        await res.flush.segment_done(call_id, stored.through, events)
        if not more:
            return done
        after, page = page[-1].entry, None


def _known(done: Flushed, stored: Stored) -> list[SegmentHead] | None:
    """The call's heads with the segment just stored, while this flush has stored every segment
    from the first (numbered on from what it stored: none stored by another in between)."""
    if done.heads is None or stored.segment != done.segments:
        return None
    rows = sorted(stored.rows, key=lambda r: r.track)
    return [*done.heads, *(head_of(stored.segment, r.track, r.encoding, r) for r in rows)]


async def _store(
    res: WorkerResources,
    call_id: str,
    page: list[StoredPacket],
    fmt: AudioFormat | None,
    said: bool,
    none_trimmed: bool = False,
) -> Stored:
    """What is new in `page` stored as the call's next segment, planned again if another
    flusher stored one meanwhile: the plan read alone, then (with an object store) its bytes
    PUT, then its rows inserted in one statement, each on the autocommit pool: no transaction
    is open across them, so a slow store holds no connection and nothing of the call's."""
    for round_ in range(STORE_ROUNDS):
        if none_trimmed and not round_:  # planned without a read: no connection to hold
            build = await _builder(res, None, call_id, fmt, said)
            plan = await plan_segment(None, call_id, page, build, NONE_TRIMMED)
            stored = await _put_and_store(res, call_id, plan)
        else:
            async with res.autocommit.connect() as conn:
                build = await _builder(res, conn, call_id, fmt, said)
                plan = await plan_segment(conn, call_id, page, build)
                # Without an object store nothing slow comes between: the plan's connection.
                stored = await store_segment(conn, call_id, plan) if res.objects is None else None
            if res.objects is not None:
                stored = await _put_and_store(res, call_id, plan)
        if stored is not None:
            return stored
    raise FlushRace(f"other flushers kept storing call {call_id}'s segments first")


async def _put_and_store(res: WorkerResources, call_id: str, plan: Planned) -> Stored | None:
    """The plan's bytes PUT if there is an object store (no connection held while it answers),
    then its rows stored, one statement sent on the pool past SQLAlchemy (db/direct.py)."""
    if res.objects is not None:
        plan = await put_objects(res.objects, call_id, plan)
    stored = await store_segment(res.autocommit, call_id, plan)
    if stored is None and plan.keys:  # lost the race: the objects just PUT are no row's
        await _forget_objects(res, call_id, list(plan.keys.values()))
    return stored


async def _forget_objects(res: WorkerResources, call_id: str, keys: list[str]) -> None:
    """Delete a lost race's objects; one the store keeps is left for the call's erasure (it
    deletes by the call's prefix), and said in the log, never a reason to fail the flush."""
    assert res.objects is not None
    try:
        await res.objects.delete_keys(keys)
    except Exception as exc:  # any store failure: the segment itself is stored by the winner
        log.warning("%s: %d objects of a lost flush race kept: %s", call_id, len(keys), exc,
                    extra=about(call_id))  # fmt: skip


async def _builder(
    res: WorkerResources,
    conn: AsyncConnection | None,
    call_id: str,
    fmt: AudioFormat | None,
    said: bool,
) -> Build:
    """How a segment's rows are built; with audio redaction, late packets' audio is silenced
    (core/audio_redaction.py: they land where the transcription has been already). `conn`
    None: planned as the call's first segment (nothing is late then, and nothing to read)."""
    if fmt is None or not res.settings.redact_audio:
        return lambda new: build_rows(new, fmt, said)
    highest = {} if conn is None else await highest_sequences(conn, call_id)
    return lambda new: mute_late(build_rows(new, fmt, said), highest, fmt)


# A follow-up is a pass of its own for a few seconds of audio, which the local model hears in the
# whole 30 s of Whisper's encoder. With flushes every FOLLOW_UP_FROM_SEGMENT_S or less the next
# segment's window comes soon enough (the live lag's p95 is about a segment,
# bench/local_model.py) while the stream flows, so a follow-up flushes only a stream that has
# gone quiet (no packet for QUIET_MS: a paused feed, a party's PBX that sends nothing in
# silence), whose last words would otherwise wait for the call's end.
FOLLOW_UP_FROM_SEGMENT_S = 20.0
QUIET_MS = 1000


async def _follow_up_due(res: WorkerResources, call_id: str) -> bool:
    """Whether a follow-up flush is worth its pass: always with long segments; with short ones
    (FOLLOW_UP_FROM_SEGMENT_S) only once the stream has gone quiet, since while it flows the
    next segment comes soon enough (jobs/transcription.py)."""
    if res.settings.live_flush_seconds > FOLLOW_UP_FROM_SEGMENT_S:
        return True
    quiet_ms = await res.flush.quiet_for_ms(call_id)
    # An empty tail is a quiet one too: a flowing stream's tail holds the last 20 ms at least.
    return quiet_ms is None or quiet_ms >= QUIET_MS


def _within_bytes(page: list[StoredPacket], more: bool) -> tuple[list[StoredPacket], bool]:
    """The first packets of `page` whose data stays within SEGMENT_BYTES (one at least), as
    FlushSource.page cuts a page it reads."""
    size = 0
    for n, packet in enumerate(page):
        size += len(packet.data)
        if size > SEGMENT_BYTES and n:
            return page[:n], True
    return page, more


async def flush_segment(res: WorkerResources, call_id: str, follow_up: bool = False) -> Flushed:
    """The flush_segment job: a live call's tail, as the ingest script asked, stored; then the
    windows it made ready are transcribed by a job of their own (jobs/transcription.py's
    live_pass), so that a flush is never held up by the AI, nor its retries by a flush. A
    follow-up (`follow_up`) stores the few seconds since a live window's last pause, for the
    pass that transcribes them (told within about a segment of being said)."""
    if follow_up and not await _follow_up_due(res, call_id):
        return Flushed()
    raw = await res.redis.get(call_keys(call_id).metadata)
    metadata = orjson.loads(raw) if raw else None
    flushed = await flush_tail(res, call_id, metadata)
    # A call that has ended is transcribed by its own job (which would otherwise race a live
    # pass for the same window: one of them would be stored, the other's work thrown away).
    if (flushed.segments or follow_up) and not await res.redis.exists(call_keys(call_id).done):
        await enqueue_live_transcription(res.queue, call_id, int(time.time() * 1000), follow_up)
    return flushed
