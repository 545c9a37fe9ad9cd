"""Personal data in what a call stored, besides its transcript: REDACT_PII=transcript,audio's
silence in the recording (where personal data was said, and which stored bytes silence it), and,
with any REDACT_PII, the data of text packets (what the mock's callers send: their text is the
call's own words) masked where it holds personal data (`mask_text`). Pure functions: the worker
(jobs/transcription.py) finds the spans as it redacts a window's text, and rewrites the rows
(db/segments.py's overwrite) in the transaction that stores the window, so a window is never
stored with its spans still audible.

Times come from the provider's word times: a span of the text (core/redaction.py's find_pii) is
silenced from the end of the word before it to the start of the word after it, and at least
from its first word's start to its last word's end, PAD_S wider on each side. A word's time is
the model's estimate, and Whisper's times drift most at a stretch's end: on tiny.en a card
number said last in its sentence was timed as ending 1.2 s before its last digits did (the
stretch's end with it), so bounding a span by its own words' times left those digits audible.
What lies between the personal data and the next word heard is silence or more of it; so a span
with no word after it in its stretch runs on to where the next stretch begins (or the window
ends), and one with no word before it from where the previous stretch ended (or the window
began). A stretch without word times (the mock, a server that ignored the granularity), or whose
words cannot be found in its text, is silenced whole: `fell_back` says so, for the call's history.

A late packet (one whose sequence is below what an earlier segment of its track holds) lands in
a stretch that may have been transcribed, and so redacted, already: it is never transcribed, so
it is stored silenced (`mute_late`), never heard back in the recording.

Bytes: a track's timeline (core/recording.py's TrackLine) says which row, and where in it, holds
each sample, so a stretch of samples becomes byte ranges of rows; those are overwritten with the
codec's silence, the same length, so nothing else of the row (sizes, runs) changes and writing
them twice writes the same thing (a re-run is harmless)."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.audio import AudioFormat
from core.recording import Recording, TrackLine
from core.redaction import Entity, find_pii
from db.segments import TEXT, PayloadEdit, SegmentHead, SegmentRow

PAD_S = 0.15
# Each codec's silence: the byte (or bytes) that decode to 0 (A-law has no 0: 0xD5 is +8).
_SILENCE = {"mulaw": b"\xff", "alaw": b"\xd5", "l16": b"\x00\x00"}

WordTime = tuple[float, float, str]  # start_s, end_s, text


@dataclass(frozen=True, slots=True)
class Found:
    """What to silence of one stretch of speech: spans of seconds, and whether they are the
    whole stretch for want of word times."""

    spans: list[tuple[float, float]]
    fell_back: bool


def pii_times(
    text: str,
    start_s: float,
    end_s: float,
    words: Sequence[WordTime] | None,
    entities: Iterable[Entity],
    room: tuple[float, float] | None = None,
) -> Found:
    """The seconds to silence for the personal data in `text`, said from start_s to end_s,
    with its words' times if the provider gave them. `room`: how far before start_s and after
    end_s nobody else was heard (the previous stretch's end, the next one's start), where a
    span at the stretch's edge runs on to (start_s to end_s when not given)."""
    found = find_pii(text, entities)
    if not found:
        return Found([], fell_back=False)
    before, after = room or (start_s, end_s)
    located = _located(text, words or ())
    spans = []
    for span in found:
        inside = [i for i, ((lo, hi), _) in enumerate(located) if lo < span.end and hi > span.start]
        if not inside:
            return Found([(start_s, end_s)], fell_back=True)
        first, last = located[inside[0]][1], located[inside[-1]][1]
        earlier = located[inside[0] - 1][1][1] if inside[0] > 0 else before
        later = located[inside[-1] + 1][1][0] if inside[-1] + 1 < len(located) else after
        spans.append((max(before, min(first[0] - PAD_S, earlier)),
                      min(after, max(last[1] + PAD_S, later))))  # fmt: skip
    return Found(spans, fell_back=False)


def _located(text: str, words: Sequence[WordTime]) -> list[tuple[tuple[int, int], WordTime]]:
    """Each word found in `text`, in order, with its character offsets there (a word the text
    does not hold, as the model wrote it, is left out)."""
    located, at, lowered = [], 0, text.lower()
    for word in words:
        said = word[2].strip().lower()
        if not said:
            continue
        found = lowered.find(said, at)
        if found < 0:
            bare = said.strip(".,?!;:\"'")
            found = lowered.find(bare, at) if bare else -1
            said = bare
        if found < 0:
            continue
        located.append(((found, found + len(said)), word))
        at = found + len(said)
    return located


Said = tuple[float, float, str, Sequence[WordTime] | None]  # jobs/ai.py's Spoken: start, end...


@dataclass(frozen=True, slots=True)
class Muted:
    """A window's silences: the edits of its rows, and the stretches (seconds from the window's
    start) silenced whole for want of word times."""

    edits: list[PayloadEdit]
    whole: list[tuple[float, float]]


def window_silences(
    recording: Recording,
    channel: int,
    window: tuple[int, int],
    placed: Sequence[Said],
    entities: Iterable[Entity],
) -> Muted:
    """What to silence of a transcribed window [start, end) (samples of the channel's track):
    each stretch's personal data (`placed`: its times from the window's start, as found, before
    redaction), kept within the window."""
    rate, (start, end) = recording.format.rate, window
    line = recording.lines[channel]
    edits: list[PayloadEdit] = []
    whole = []
    # Around each stretch, nobody was heard from the previous one's end (the window's start) to
    # the next one's start (the window's end).
    previous_ends = [0.0, *(said[1] for said in placed[:-1])]
    next_starts = [*(said[0] for said in placed[1:]), (end - start) / rate]
    for (begin_s, end_s, text, words), before, after in zip(
        placed, previous_ends, next_starts, strict=True
    ):
        room = (min(before, begin_s), max(after, end_s))
        found = pii_times(text, begin_s, end_s, words, entities, room)
        for a, b in found.spans:
            first = min(max(start + int(a * rate), start), end)
            last = min(max(start + math.ceil(b * rate), first), end)
            edits += silences(line, recording.rows, recording.format, first, last)
        if found.fell_back:
            whole.append((begin_s, end_s))
    return Muted(edits, whole)


def note(start_s: float, speaker: str, begin_s: float, end_s: float) -> str:
    """The call's history's note of a stretch silenced whole (times on the call's timeline)."""
    return (
        f"no word times from the provider: silenced the whole utterance at "
        f"{start_s + begin_s:.2f}-{start_s + end_s:.2f} s of the {speaker}'s audio"
    )


def silences(
    line: TrackLine, rows: Sequence[tuple[int, int]], fmt: AudioFormat, start: int, end: int
) -> list[PayloadEdit]:
    """The edits that silence samples [start, end) of the track (its own timeline): the stored
    bytes there, in whichever rows hold them; a text row's packets (base64 audio) are silenced
    whole, each re-encoded to the same length."""
    edits = []
    first = max(int(np.searchsorted(line.starts, start, side="right")) - 1, 0)
    for i in range(first, len(line.starts)):
        begin = int(line.starts[i])
        if begin >= end:
            break
        a, b = max(start, begin), min(end, begin + int(line.lengths[i]))
        if b <= a:
            continue
        segment, track = rows[int(line.rows[i])]
        at, stride, per = int(line.at[i]), int(line.stride[i]), int(line.per[i])
        if not stride:
            skip = (a - begin) * fmt.sample_bytes
            data = _SILENCE[fmt.codec] * (b - a)
            edits.append(PayloadEdit(segment, track, at + skip, data))
            continue
        k0, k1 = (a - begin) // per, -(-(b - begin) // per)
        packet = base64.b64encode(_SILENCE[fmt.codec] * per)
        if len(packet) == stride:  # always, for data that decoded to `per` samples
            edits.append(PayloadEdit(segment, track, at + k0 * stride, packet * (k1 - k0)))
    return edits


def mute_late(
    rows: list[SegmentRow], highest: dict[int, int], fmt: AudioFormat
) -> list[SegmentRow]:
    """A segment's rows with the audio of its late packets (a sequence at most `highest[track]`,
    what earlier segments hold) silenced, the same length; text rows as they are."""
    muted = []
    for row in rows:
        before = highest.get(row.track)
        if before is None or row.encoding != str(fmt) or row.sequences[0] > before:
            muted.append(row)
            continue
        payload, at = bytearray(row.payload), 0
        for sequence, size in zip(row.sequences, row.sizes, strict=True):
            if sequence <= before:
                payload[at : at + size] = _SILENCE[fmt.codec] * (size // fmt.sample_bytes)
            at += size
        muted.append(replace(row, payload=bytes(payload)))
    return muted


MASK = b"*"  # what a text packet's personal data becomes, a byte for a byte


def mask_text(
    heads: Sequence[SegmentHead], payloads: dict[int, bytes], entities: Iterable[Entity]
) -> list[PayloadEdit]:
    """The edits that mask the personal data in one track's text rows (`payloads` by index into
    `heads`), found in the packets' data joined in sequence order as the transcript is (so a
    number sent in two packets is found whole); each byte of it becomes MASK, so the rows keep
    their sizes."""
    packets = []  # (sequence, row, the data's first byte in the row, the data)
    for i, head in enumerate(heads):
        if head.encoding != TEXT or i not in payloads:
            continue
        r = head.runs
        for k in range(len(r.first)):
            stride, at = int(r.last_size[k]), int(r.at[k])
            for j in range(int(r.count[k])):
                data = payloads[i][at + j * stride : at + (j + 1) * stride]
                packets.append((int(r.first[k]) + j, i, at + j * stride, data))
    packets.sort()
    text, placed = "", []  # each packet's stripped text: where it starts in `text`
    for _, row, at, data in packets:
        said = data.decode(errors="replace")
        stripped = said.strip()
        if not stripped:
            continue
        lead = len(said) - len(said.lstrip())
        text += (" " if text else "") + stripped
        placed.append((len(text) - len(stripped), len(stripped), said, lead, row, at))
    edits = []
    for span in find_pii(text, entities):
        for start, length, said, lead, row, at in placed:
            a, b = max(span.start, start), min(span.end, start + length)
            if b <= a:
                continue
            first = len(said[: lead + a - start].encode())
            size = len(said[lead + a - start : lead + b - start].encode())
            edits.append(PayloadEdit(heads[row].segment, heads[row].track, at + first, MASK * size))
    return edits
