"""A call as a conversation: who said what when (utterances), and the figures a supervisor reads
off it: each speaker's talk time and utterances, the silence, and the overlap (both talking at
once). Pure functions, no I/O: the worker computes them once a call is transcribed, the API for
a live call's utterances so far."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from db.feed_events import UTTERANCE_MAX_CHARS
from db.packets import TRACKS
from db.record import Conversation, Sentiment, SpeakerFigures


@dataclass(frozen=True, slots=True)
class Utterance:
    track: int  # db.packets.Track.number: 0 inbound (the caller), 1 outbound (the agent)
    start_s: float  # seconds of the call (the recording's timeline)
    end_s: float
    text: str
    sentiment: Sentiment


class TimedText(NamedTuple):
    """A stretch of speech: seconds of its audio, and what was said (jobs/ai.py's Spoken)."""

    start_s: float
    end_s: float
    text: str


def split_long(
    start_s: float, end_s: float, text: str, max_chars: int = UTTERANCE_MAX_CHARS
) -> list[TimedText]:
    """A stretch of speech as utterances of at most `max_chars` characters each (an utterance's
    text is capped: db/feed_events.py), cut between words, each given its share of the time by
    its share of the characters (a model that gives one time for the whole stretch says nothing
    finer). Text that fits comes back as it is; a word longer than the cap is cut inside."""
    if len(text) <= max_chars:
        return [TimedText(start_s, end_s, text)]
    pieces: list[str] = []
    current = ""
    for word in text.split():
        while len(word) > max_chars:  # no space to cut at
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:max_chars])
            word = word[max_chars:]
        if not word:
            continue
        if current and len(current) + 1 + len(word) > max_chars:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    total = sum(len(p) for p in pieces) or 1
    seconds, done, found = end_s - start_s, 0, []
    for piece in pieces:
        begins = start_s + seconds * done / total
        done += len(piece)
        found.append(TimedText(round(begins, 3), round(start_s + seconds * done / total, 3), piece))
    return found


def speaker_names(setting: Sequence[str]) -> dict[int, str]:
    """SPEAKER_NAMES (inbound's, outbound's) by track number."""
    return {track.number: name for track, name in zip(TRACKS, setting, strict=True)}


def in_order(utterances: Sequence[Utterance]) -> list[Utterance]:
    return sorted(utterances, key=lambda u: (u.start_s, u.track, u.end_s))


def flat_text(utterances: Sequence[Utterance]) -> str:
    """The call's transcript as one string (the `transcript` field): utterances by start time."""
    return " ".join(u.text for u in in_order(utterances) if u.text)


def _union_s(spans: Sequence[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def _overlaps(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> list[float]:
    """The seconds of each overlap of a span of `a` with a span of `b` (each sorted)."""
    found, j = [], 0
    for start, stop in a:
        while j < len(b) and b[j][1] <= start:
            j += 1
        k = j
        while k < len(b) and b[k][0] < stop:
            shared = min(stop, b[k][1]) - max(start, b[k][0])
            if shared > 0:
                found.append(shared)
            k += 1
    return found


def conversation(
    utterances: Sequence[Utterance],
    seconds: float,
    names: Mapping[int, str],
    score: Callable[[str], Sentiment],
) -> Conversation:
    """The figures of a call `seconds` long: per speaker (their utterances' time, count and the
    sentiment of all they said, by `score`), silence (no utterance of anyone) and overlap."""
    spans = {
        track: sorted((u.start_s, u.end_s) for u in utterances if u.track == track)
        for track in names
    }
    speakers = {}
    for track, name in names.items():
        said = [u for u in in_order(utterances) if u.track == track]
        if not said:
            continue
        text = " ".join(u.text for u in said if u.text)
        scored = score(text) if text else None
        speakers[name] = SpeakerFigures(
            track=TRACKS[track].value,
            utterances=len(said),
            talk_s=round(_union_s(spans[track]), 3),
            sentiment=scored,
        )
    everyone = [span for track_spans in spans.values() for span in track_spans]
    shared = _overlaps(spans.get(0, []), spans.get(1, []))
    return Conversation(
        speakers=speakers,
        silence_s=round(max(seconds - _union_s(everyone), 0.0), 3),
        overlap_count=len(shared),
        overlap_s=round(sum(shared), 3),
    )
