"""A call transcribed a window of each track at a time: while it goes on (after each segment is
flushed: jobs/segments.py), and what is left once it ends (jobs/process.py). Audio is
transcribed once: each window starts where the track's last one ended (db/transcripts.py keeps
where), and the final transcript is the windows' utterances together.

A live window ends in the last pause (a breath: a few quiet 20 ms frames) of what is
stored, so that a word is not cut in two by the segment boundary (Redis' tail is flushed at any
packet); the rest waits for the next window. The last window of a finished call runs to the
track's end.

Each utterance gets a sentiment as it is stored, from the provider's own scorer (the mock's
keywords, VADER for the others): one AI request per utterance would multiply a call's requests
by its length. The call's overall sentiment stays the provider's one request (jobs/process.py).

A call whose packets are not audio (text, as the mock's callers send) is transcribed once, at its
end, a track at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from core.audio import pause_cut, quietest_cut
from core.audio_redaction import mask_text, note, window_silences
from core.conversation import Utterance, split_long
from core.logs import about
from core.recording import NotAudio, Recording, load_recording, texts
from core.redaction import parse_entities, redact
from db import transcripts, worker_writes
from db.events import attempt_event
from db.feed_events import Said, UtteranceEvent
from db.keys import call_keys
from db.leases import TranscriptionLock
from db.segments import TEXT, PayloadEdit, SegmentHead, SegmentReader, overwrite
from db.states import CallState
from db.transcripts import UtteranceRow
from db.worker_writes import AttemptRecord, budget_key
from jobs.ai import Sentiment, SpeechSource, Spoken, sentiment_of
from jobs.attempts import CallDeadline, Recorder, StepExhausted, policy_of, run_step
from jobs.audio import TrackAudio, TrackText, transcription_allowance_s
from jobs.queue import enqueue_follow_up
from jobs.resources import WorkerResources
from settings import Settings

log = logging.getLogger(__name__)
# A live window ends in the last pause of what is stored (core/audio.py's pause_cut), looked for
# this far back.
CUT_SEARCH_S = 8.0
# A live window is at least this long: shorter ones cost a request and give the model little
# context.
MIN_WINDOW_S = 2.0
LOCK_POLL_S = 0.1
# The final pass carries on from where another pass got to, when that one stored a window first;
# each round means the other pass made progress, so this only bounds a pathological race.
FINAL_ROUNDS = 8
TEXT_WINDOW = (0, 1)  # a text track's one window, whatever its length
# The local Whisper hears 30 s at a time, padded with silence: a short window (the few seconds
# left of a track after its live windows) heard alone is heard worse than with what was said
# before it (tests/jobs/test_live_windows.py: "your service is awful" heard as "your term is
# imma'ful" in a window of 2.8 s alone). A window shorter than LEAD_BELOW_S is given up to LEAD_S
# of the track's audio before it too, already transcribed, and what was said there is dropped
# again by its word times. Only for the local model: its word times say where each word was,
# and the extra seconds cost CPU, not a provider's bill.
LEAD_BELOW_S = 10.0
LEAD_S = 10.0
# The step audio redaction's notes are kept under in the call's history (GET .../history).
AUDIO_REDACTION = "audio_redaction"

# Transcribes one window: (what to transcribe, its label (the unit of work: "the caller's audio
# at 35.8-75.0 s"), extra seconds allowed).
Transcribe = Callable[[SpeechSource, str, float], Awaitable[list[Spoken]]]


def window_transcriber(
    res: WorkerResources,
    call_id: str,
    record: Recorder,
    *,
    live: bool,
    spent: Callable[[str], int] = lambda _unit: 0,
    deadline: CallDeadline | None = None,
) -> Transcribe:
    """How every transcription window is run, live or in the final run: its own
    AI_MAX_ATTEMPTS (less what an earlier run of the same window spent: `spent`, by budget key),
    backoff and per-attempt timeout, the timeout grown by the window's allowance for its audio;
    within the call's `deadline` (grown by the same allowance) in the final run, within a budget
    of its own live. Its attempts are recorded with the window's label; a failure names it."""
    policy = policy_of(res.settings)

    async def transcribe(audio: SpeechSource, label: str, extra_s: float) -> list[Spoken]:
        grown = replace(
            policy,
            attempt_timeout_s=policy.attempt_timeout_s + extra_s,
            budget_s=policy.budget_s + extra_s,
        )
        try:
            with res.stages.timing("ai"):
                return await run_step(
                    "transcription",
                    lambda: _asked(res, call_id, audio),
                    grown,
                    record,
                    spent(budget_key("transcription", label)),
                    window=label,
                    live=live,
                    deadline=None if deadline is None else deadline.extend(extra_s),
                    breaker=res.breaker,
                    limiter=res.ai_limiter,
                )
        except StepExhausted as exc:
            raise StepExhausted(f"{exc} (transcribing {label})") from exc

    return transcribe


def _asked(res: WorkerResources, call_id: str, audio: SpeechSource) -> Awaitable[list[Spoken]]:
    """The provider's transcription; word times asked for when audio is redacted, and of the
    local model, which times words anyway (to cut utterances at pauses) and whose short windows'
    lead is dropped by them (LEAD_S); a provider's signature without `words` serves the rest."""
    if res.settings.redact_audio or res.settings.ai_provider == "local":
        return res.ai.transcribe_segments(call_id, audio, words=True)
    return res.ai.transcribe_segments(call_id, audio)


@dataclass(frozen=True, slots=True)
class Transcribed:
    """A window's utterances (redacted), and the edits of its stored rows: its audio silenced
    where it said personal data (REDACT_PII=transcript,audio), a text track's data masked; and
    a note for the call's history when a stretch without word times was silenced whole."""

    utterances: list[Utterance]
    edits: list[PayloadEdit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Ready:
    """What a pass stored: windows; and whether stored audio is left untranscribed (what
    follows a window's last pause, or a track with no pause yet). A final pass also says how
    long the recording is (0 for text packets), and, when it transcribed the call whole (one
    whose run stored every segment of it, given their `heads`), its utterances: what a read of
    them would give. `told`: the feed's events of the utterances it stored, for the caller to
    publish (with its own next events: one round trip)."""

    stored: int
    pending: bool
    seconds: float | None = None
    said: list[Utterance] | None = None
    told: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Window:
    channel: int  # the recording's line
    track: int
    start: int  # samples on the track's own timeline
    end: int
    offset_s: float  # where the track starts on the call's timeline


def utterance_scorer(settings: Settings) -> Callable[[str], Sentiment]:
    """How one utterance's sentiment is scored: the mock's keywords, else VADER."""
    if settings.ai_provider == "mock":
        return sentiment_of
    from jobs.ai_local import vader_sentiment

    return vader_sentiment


def windows(recording: Recording, done: dict[int, int], final: bool, min_s: float) -> list[Window]:
    """The windows ready to transcribe: per track, from where it was transcribed to (for a live
    call, only if at least `min_s` of audio waits; the end is cut later, at a quiet frame)."""
    rate = recording.format.rate
    ready = []
    for channel, line in enumerate(recording.lines):
        start = done.get(line.track, 0)
        if line.samples - start <= 0 or (not final and line.samples - start < min_s * rate):
            continue
        ready.append(Window(channel, line.track, start, line.samples, line.offset / rate))
    return ready


async def _cut(recording: Recording, window: Window, longest_s: float) -> int | None:
    """A live window's end, in the last pause of what is stored (at most CUT_SEARCH_S back);
    None to wait for more audio. A stretch with no pause longer than `longest_s` is cut at its
    quietest frame: a window never grows without bound."""
    fmt = recording.format
    first = max(window.start, window.end - int(CUT_SEARCH_S * fmt.rate))
    tail = await recording.track(window.channel, first, window.end)
    cut = pause_cut(tail, fmt.frame_samples())
    if cut is not None and first + cut > window.start:
        return first + cut
    if window.end - window.start < longest_s * fmt.rate:
        return None
    return first + quietest_cut(tail, 0, len(tail), fmt.frame_samples()) or window.end


async def transcribe_ready(
    res: WorkerResources,
    call_id: str,
    metadata: dict[str, Any] | None,
    transcribe: Transcribe,
    *,
    final: bool,
    state: CallState,
    heads: Sequence[SegmentHead] | None = None,
) -> Ready:
    """Transcribe every window of the call that is ready and store its utterances (their events
    on the live feed, as of the call's `state`, in Ready.told: a final pass that fails publishes
    them itself). `final`: the call has ended, so every track is transcribed to its end.

    One pass at a time (TranscriptionLock): a live pass that finds another running leaves the
    audio to it; the final pass waits for a live one to finish (at most the lock's lifetime,
    after which the lock lapses), then goes on anyway: db/transcripts.py stores a window once
    whatever happens, and the final pass carries on from where another pass got to, so the lock
    only saves the work a race would throw away. `heads`: the final pass of a call every segment
    of which its own run stored (jobs/flushing.py's Held.heads: theirs), so no other pass ever
    ran or will run (a live pass follows a segment a live flush stored) and nothing is
    transcribed yet: no lock, no read of the heads or of where its tracks are transcribed to."""
    if heads is not None:
        return await _transcribe_ready(res, call_id, metadata, transcribe, final, state, heads)
    lock = TranscriptionLock(res.redis)
    holder = f"{os.getpid()}:{uuid.uuid4().hex[:12]}"
    # About a pass's time (a window or two, an attempt or three); one that takes longer only
    # lets a racing pass in, whose work store_window then drops.
    ttl_s = 2 * res.settings.live_flush_seconds + 3 * res.settings.ai_attempt_timeout_s
    taken = await lock.take(call_id, holder, ttl_s)
    if not taken and not final:
        return Ready(0, pending=False)
    waited = 0.0
    while not taken and waited < ttl_s:
        await asyncio.sleep(LOCK_POLL_S)
        waited += LOCK_POLL_S
        taken = await lock.take(call_id, holder, ttl_s)
    try:
        return await _transcribe_ready(res, call_id, metadata, transcribe, final, state)
    finally:
        if taken:
            await lock.drop(call_id, holder)


async def _transcribe_ready(
    res: WorkerResources,
    call_id: str,
    metadata: dict[str, Any] | None,
    transcribe: Transcribe,
    final: bool,
    state: CallState,
    heads: Sequence[SegmentHead] | None = None,
) -> Ready:
    fresh = heads is not None  # nothing of the call transcribed, no other pass (see above)
    reader = SegmentReader(res.reads, call_id, res.objects, heads)
    try:
        recording = await load_recording(reader, metadata, res.settings)
    except NotAudio as exc:
        if not final:
            return Ready(0, pending=False)  # not audio: transcribed once, at the end
        done = {} if fresh else await _transcribed_to(res, call_id)
        texts = await _transcribe_text(res, call_id, reader, done, str(exc), transcribe, state)
        told = _told(res, call_id, [u for text in texts for u in text], state)
        return Ready(len(texts), False, 0.0, _whole(fresh, texts), told)
    stored = 0
    said: list[Utterance] = []
    for round_ in range(FINAL_ROUNDS):
        done = {} if fresh and not round_ else await _transcribed_to(res, call_id)
        ready = await _ready(res, recording, done, final)
        results = await asyncio.gather(
            *(_transcribe_window(res, recording, w, end, transcribe) for w, end in ready),
            return_exceptions=True,
        )
        kept, failure = await _store_all(res, call_id, recording, ready, results, state)
        stored += len(kept)
        said += [u for window in kept for u in window]
        if failure is not None and final:
            await res.events.publish(*_told(res, call_id, said, state))  # what was stored
            raise failure
        if failure is not None:
            log.warning("%s: a live window is left for the end of the call: %s", call_id,
                        failure, extra=about(call_id))  # fmt: skip
            return Ready(stored, False, told=_told(res, call_id, said, state))
        if not final or len(kept) == len(ready):
            pending = any(w.end > end for w, end in ready)
            pending = pending or len(ready) < len(windows(recording, done, final, 0.0))
            whole = _whole(fresh and not round_, [said])
            told = _told(res, call_id, said, state)
            return Ready(stored, pending, recording.seconds if final else None, whole, told)
        # Another pass (a live one the final pass stopped waiting for) stored a window first:
        # carry on from where it got to, so that every track is transcribed to its end.
        log.info("%s: carrying on from another pass's windows", call_id, extra=about(call_id))
    raise StepExhausted(
        f"transcription: other passes kept storing this call's windows first ({FINAL_ROUNDS} "
        "rounds); replay the call"
    )


def _told(
    res: WorkerResources, call_id: str, said: list[Utterance], state: CallState
) -> list[dict[str, Any]]:
    return [utterance_event(res, call_id, u, state) for u in said]


def _whole(fresh: bool, windows: list[list[Utterance]]) -> list[Utterance] | None:
    """A fresh call's utterances (its pass was the only one), from every window of it this pass
    stored, as PostgreSQL orders them (db/transcripts.py's utterances: by start, track, then as
    stored); None unless `fresh`."""
    if not fresh:
        return None
    return sorted((u for window in windows for u in window), key=lambda u: (u.start_s, u.track))


async def _transcribed_to(res: WorkerResources, call_id: str) -> dict[int, int]:
    async with res.reads() as session:
        return await transcripts.transcribed_to(session, call_id)


async def _ready(
    res: WorkerResources, recording: Recording, done: dict[int, int], final: bool
) -> list[tuple[Window, int]]:
    """The windows to transcribe now, each with its end (a live one's in its last pause)."""
    longest = 2 * res.settings.live_flush_seconds
    ready = []
    for window in windows(recording, done, final, MIN_WINDOW_S):
        end = window.end if final else await _cut(recording, window, longest)
        if end is not None:
            ready.append((window, end))
    return ready


async def _store_all(
    res: WorkerResources,
    call_id: str,
    recording: Recording,
    ready: Sequence[tuple[Window, int]],
    results: Sequence[Transcribed | BaseException],
    state: CallState,
) -> tuple[list[list[Utterance]], BaseException | None]:
    """Store every window that was transcribed (a party's words are kept though the other's
    window failed: a replay redoes only what is missing); returns the utterances of each window
    stored (not of one another run stored first) and the first failure, to raise once the rest
    are kept."""
    failures = [r for r in results if isinstance(r, BaseException)]
    if any(not isinstance(f, StepExhausted) for f in failures):
        raise next(f for f in failures if not isinstance(f, StepExhausted))
    kept = []
    for (window, end), found in zip(ready, results, strict=True):
        if not isinstance(found, BaseException):
            label = _label(res, window.track, *_seconds(recording, window, end))
            span = (window.start, end)
            if await _store(res, call_id, window.track, span, found, state, label):
                kept.append(found.utterances)
    return kept, failures[0] if failures else None


def _seconds(recording: Recording, window: Window, end: int) -> tuple[float, float]:
    """The window's start on the call's timeline, and its length, in seconds."""
    rate = recording.format.rate
    return window.offset_s + window.start / rate, (end - window.start) / rate


async def _transcribe_window(
    res: WorkerResources, recording: Recording, window: Window, end: int, transcribe: Transcribe
) -> Transcribed:
    lead = _lead(res, recording, window, end)
    audio = TrackAudio(recording, window.channel, window.start - lead, end)
    start_s, seconds = _seconds(recording, window, end)
    label = _label(res, window.track, start_s, seconds)  # the window's span
    extra_s = transcription_allowance_s(res.settings, audio.seconds)
    placed = [audio.placed(s) for s in await transcribe(audio, label, extra_s)]
    if lead:
        placed = after_lead(placed, lead / recording.format.rate)
    found = await _utterances(res, window.track, start_s, placed)
    if not res.settings.redact_audio or not placed:
        return Transcribed(found)
    return await asyncio.to_thread(_muted, res, recording, window, end, placed, found)


def _lead(res: WorkerResources, recording: Recording, window: Window, end: int) -> int:
    """Samples of the track before a short window given to the local model with it (LEAD_S)."""
    rate = recording.format.rate
    if res.settings.ai_provider != "local" or end - window.start >= LEAD_BELOW_S * rate:
        return 0
    return min(window.start, int(LEAD_S * rate))


def after_lead(placed: list[Spoken], lead_s: float) -> list[Spoken]:
    """What was said after the first `lead_s` seconds, timed from there: a stretch's words that
    end in the lead were transcribed with the window before (a stretch without word times is
    kept if most of it is after the lead)."""
    kept = []
    for spoken in placed:
        words = spoken.words
        if words is None:
            if (spoken.start_s + spoken.end_s) / 2 < lead_s:
                continue
            kept.append(_shifted(spoken, lead_s))
            continue
        after = tuple(w for w in words if (w.start_s + w.end_s) / 2 >= lead_s)
        if not after:
            continue
        if len(after) < len(words):
            text = " ".join(w.text for w in after)
            spoken = spoken._replace(start_s=after[0].start_s, text=text, words=after)
        kept.append(_shifted(spoken, lead_s))
    return kept


def _shifted(spoken: Spoken, by_s: float) -> Spoken:
    words = spoken.words
    if words is not None:
        words = tuple(
            w._replace(start_s=max(w.start_s - by_s, 0.0), end_s=max(w.end_s - by_s, 0.0))
            for w in words
        )
    return spoken._replace(
        start_s=max(spoken.start_s - by_s, 0.0), end_s=max(spoken.end_s - by_s, 0.0), words=words
    )


def _muted(
    res: WorkerResources,
    recording: Recording,
    window: Window,
    end: int,
    placed: list[Spoken],
    found: list[Utterance],
) -> Transcribed:
    """The window's silences and its notes (CPU work: run off the loop)."""
    start_s = _seconds(recording, window, end)[0]
    speaker = res.settings.speaker_names[window.track]
    muted = window_silences(recording, window.channel, (window.start, end), placed,
                            parse_entities(res.settings.redact_pii_entities))  # fmt: skip
    return Transcribed(found, muted.edits, [note(start_s, speaker, a, b) for a, b in muted.whole])


async def _transcribe_text(
    res: WorkerResources,
    call_id: str,
    reader: SegmentReader,
    done: dict[int, int],
    problem: str,
    transcribe: Transcribe,
    state: CallState,
) -> list[list[Utterance]]:
    """A call of text packets: each track's text at once (its times: none to speak of); returns
    the utterances of each track's text it stored."""
    heads = await reader.heads()
    kept = []
    for track in sorted({h.track for h in heads}):
        if done.get(track, 0) >= TEXT_WINDOW[1]:
            continue
        mine = [h for h in heads if h.track == track]
        payloads = {
            i: await reader.payload(h.segment, h.track)
            for i, h in enumerate(mine)
            if h.encoding == TEXT
        }
        piece = TrackText(texts(mine, payloads), problem)
        label = f"the {res.settings.speaker_names[track]}'s text"
        spoken = await transcribe(piece, label, 0.0)
        found = await _utterances(res, track, 0.0, spoken)
        # The packets' own text, stored as sent, is masked where it says personal data.
        masks = []
        if res.settings.redact_pii != "off":
            masks = await asyncio.to_thread(
                mask_text, mine, payloads, parse_entities(res.settings.redact_pii_entities)
            )
        if await _store(res, call_id, track, TEXT_WINDOW, Transcribed(found, masks), state, label):
            kept.append(found)
    return kept


def _label(res: WorkerResources, track: int, start_s: float, seconds: float) -> str:
    name = res.settings.speaker_names[track]
    return f"the {name}'s audio at {start_s:.1f}-{start_s + seconds:.1f} s"


async def _utterances(
    res: WorkerResources, track: int, offset_s: float, spoken: list[Spoken]
) -> list[Utterance]:
    """What a window found, as utterances on the call's timeline (each at most
    UTTERANCE_MAX_CHARS: longer speech is split), each redacted (REDACT_PII) and scored on the
    redacted text. This is the one way a transcription's text reaches storage, so nothing holds
    the original (invariant 20). The work runs off the event loop (VADER and the recogniser are
    CPU work: invariant 14)."""
    score = utterance_scorer(res.settings)
    redacting = res.settings.redact_pii != "off"
    entities = parse_entities(res.settings.redact_pii_entities)

    def scored() -> list[Utterance]:
        said = [(s.start_s, s.end_s, redact(s.text, entities) if redacting else s.text)
                for s in spoken]  # fmt: skip
        # An utterance's text is capped (a feed event is bounded): longer speech is several.
        pieces = [p for s in said for p in split_long(*s)]
        return [
            Utterance(
                track,
                round(offset_s + s.start_s, 3),
                round(offset_s + s.end_s, 3),
                s.text,
                score(s.text),
            )
            for s in pieces
        ]

    return await asyncio.to_thread(scored) if spoken else []


async def _store(
    res: WorkerResources,
    call_id: str,
    track: int,
    span: tuple[int, int],
    done: Transcribed,
    state: CallState,
    label: str,
) -> bool:
    """Store a window and its utterances once, its audio silenced where it said personal data
    (in the same transaction: a window is never stored with its spans audible, and a run that
    dies before the commit leaves the window to do again). False if another run stored it (and
    silenced what it found)."""
    found = done.utterances
    rows = [
        UtteranceRow(u.track, u.start_s, u.end_s, u.text, u.sentiment.label, u.sentiment.score)
        for u in found
    ]
    # A window alone is one statement, atomic on its own: sent on the pool past SQLAlchemy
    # (db/direct.py); with audio silenced or a note beside it, one transaction, so that it is
    # never stored with its spans still audible.
    if not (done.edits or done.notes):
        stored = await transcripts.store_window(
            res.autocommit, call_id, track, *span, rows, res.webhooks
        )
        return _first(call_id, stored)
    async with res.engine.begin() as conn:
        stored = await transcripts.store_window(conn, call_id, track, *span, rows, res.webhooks)
        if not _first(call_id, stored):
            return False
        await overwrite(conn, call_id, done.edits, res.objects)
        if done.notes:
            await worker_writes.record_live_attempts(
                conn, call_id, _noted(done.notes, label, state)
            )
    return True


def _first(call_id: str, stored: bool) -> bool:
    """Whether this run stored its window (False: another run stored it first)."""
    if not stored:
        log.info("%s: a window was transcribed twice; kept the first", call_id,
                 extra=about(call_id))  # fmt: skip
    return stored


def _noted(notes: list[str], label: str, state: CallState) -> list[AttemptRecord]:
    """Audio redaction's fallbacks, kept with the call's AI attempts (its history)."""
    now, live = datetime.now(UTC), state is CallState.IN_PROGRESS
    return [
        AttemptRecord(AUDIO_REDACTION, 1, "fallback", note, now, 0.0, label, live) for note in notes
    ]


def utterance_event(
    res: WorkerResources, call_id: str, u: Utterance, state: CallState
) -> dict[str, Any]:
    sentiment = (u.sentiment.label, u.sentiment.score)
    said = Said.of(u.track, u.start_s, u.end_s, u.text, sentiment, res.settings.speaker_names)
    return UtteranceEvent(call_id=call_id, state=state, **dict(said)).body()


# After a live pass that left stored audio past its windows' last pauses (the words being said as
# the segment was cut), a follow-up flush this much later stores what came since, for the next
# pass: an utterance is told within about a segment of being said, not two.
FOLLOW_UP_S = 3.0


async def live_pass(res: WorkerResources, call_id: str, follow_up: bool = False) -> Ready:
    """The transcribe_live job, queued by a segment flush that stored audio of a live call
    (jobs/segments.py): the windows that are ready; then, unless this pass follows a follow-up
    flush already, one follow-up flush FOLLOW_UP_S later if audio waits past their last pause
    (jobs/segments.py's flush_segment skips it while a stream of short segments flows)."""
    if await res.redis.exists(call_keys(call_id).done):
        return Ready(0, pending=False)  # ended: its own job transcribes the rest
    raw = await res.redis.get(call_keys(call_id).metadata)
    ready = await transcribe_live(res, call_id, orjson.loads(raw) if raw else None)
    if ready.pending and not follow_up:
        await enqueue_follow_up(res.queue, call_id, FOLLOW_UP_S, int(time.time() * 1000))
    return ready


async def transcribe_live(
    res: WorkerResources, call_id: str, metadata: dict[str, Any] | None
) -> Ready:
    """A live call's windows that are ready, after a segment flush: each with a retry budget of
    its own (window_transcriber), the breaker and the shared limit, its attempts kept (live:
    they spend nothing of the final run's budgets). A window that cannot be transcribed now is
    left for the call's final run, which tries it again with a fresh budget and fails the call,
    naming it, only if that one runs out too."""

    async def record(attempt: AttemptRecord) -> bool:
        async with res.autocommit.connect() as conn:
            await worker_writes.record_live_attempts(conn, call_id, [attempt])
        await res.events.publish(attempt_event(call_id, CallState.IN_PROGRESS.value, attempt))
        return True

    transcribe = window_transcriber(res, call_id, record, live=True)
    ready = await transcribe_ready(
        res, call_id, metadata, transcribe, final=False, state=CallState.IN_PROGRESS
    )
    await res.events.publish(*ready.told)
    return ready
