"""A call's audio for the AI providers: its stored segments (core/recording.py), read lazily.

The audio is read from PostgreSQL a row at a time and decoded as it comes (the call's format: a
media stream's `start.mediaFormat`, else PACKET_AUDIO_ENCODING), so memory stays bounded however
long the call: its segments' heads, and a few segments of audio at most. Gaps are silence, as
core/recording.py says; two tracks are mixed into one channel for a transcription of the call.

Data that is not base64, or not whole samples of the format, or a format we cannot decode, raises
UndecodableAudio: a permanent failure, so the call ends FAILED with the reason, never retried.
The mock provider does not decode anything: it reads text packets' data (`texts`), and says how
much audio there is otherwise (`seconds`), so its transcript of a real call stays short.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from core.audio import AudioFormat, Samples, UnsupportedAudio, quietest_cut
from core.recording import (
    NotAudio,
    Recording,
    SegmentSource,
    call_format,
    texts,
)
from db.segments import TEXT
from jobs.ai import AudioFacts, PermanentAIError, Spoken
from settings import Settings

# Extra time a transcription may take per second of audio when AI_TIMEOUT_PER_AUDIO_S is unset:
# the mock ignores the audio; the local model needs a fraction of a CPU second per second of
# audio (BENCHMARKS.md), more when the cores are shared; a hosted model is faster.
# MAX_CALL_SECONDS, for a CallAudio whose caller does not pass the setting's value.
DEFAULT_MAX_CALL_S = float(Settings.model_fields["max_call_seconds"].default)
TIMEOUT_PER_AUDIO_S = {"mock": 0.0, "local": 0.5, "openai": 0.5}
JOB_MARGIN_S = 30.0
# What a track's window is read a block at a time: 160 KB of PCM at 8 kHz, 960 KB at 48 kHz;
# a provider's piece (at most its max_s, cut at a quiet frame) is held besides.
TRACK_BLOCK_S = 10.0  # left of JOB_TIMEOUT_S for the flush and the final writes


class UndecodableAudio(PermanentAIError):
    """The call's data is not audio we can decode: the call ends FAILED, never retried."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"the call's audio cannot be decoded: {problem}")


class CallAudio:
    """One call's segments for one AI step: the text the mock reads, the audio real providers
    get. Nothing is read before a provider asks."""

    def __init__(
        self,
        call_id: str,
        source: SegmentSource,
        default_format: str,
        metadata: dict[str, Any] | None = None,
        max_call_s: float = DEFAULT_MAX_CALL_S,
    ) -> None:
        self.call_id = call_id
        self.max_call_s = max_call_s
        self.source = source
        self.default_format = default_format
        self.metadata = metadata
        self._facts: AudioFacts | None = None
        self._recording: Recording | None = None

    async def texts(self) -> list[str]:
        """The data of the packets that are not audio, in sequence order, as sent."""
        heads = await self.source.heads()
        payloads = {
            i: await self.source.payload(h.segment, h.track)
            for i, h in enumerate(heads)
            if h.encoding == TEXT
        }
        return texts(heads, payloads)

    async def facts(self) -> AudioFacts:
        """The call's format and how long it is, from its segments' heads."""
        if self._facts is None:
            try:
                fmt, _ = call_format(self.metadata, self.default_format)
                self._recording = await Recording.load(self.source, fmt, self.max_call_s)
                rec = self._recording
                self._facts = AudioFacts(fmt, None, rec.seconds, len(rec.lines))
            except (UnsupportedAudio, NotAudio) as exc:
                self._facts = AudioFacts(None, str(exc), 0.0, 0)
        return self._facts

    async def format(self) -> AudioFormat:
        facts = await self.facts()
        if facts.format is None:
            raise UndecodableAudio(facts.problem or "unknown format")
        return facts.format

    async def recording(self) -> Recording:
        await self.format()
        assert self._recording is not None
        return self._recording

    async def pcm(self) -> AsyncIterator[Samples]:
        """The call's audio as 16-bit PCM at its format's rate, a block at a time, gaps filled,
        two tracks mixed."""
        recording = await self.recording()
        async for block in recording.blocks(mono=True):
            yield block

    async def segments(self, max_s: float, search_s: float) -> AsyncIterator[Samples]:
        """The audio in pieces of at most `max_s` seconds, cut at quiet frames."""
        fmt = await self.format()
        async for piece in cut_at_quiet_frames(self.pcm(), fmt, max_s, search_s):
            yield piece


class TrackAudio:
    """One track's window [start, end) of a call's recording (samples on the track's own
    timeline), as the providers read a call: what a live call's window or the rest of a
    finished call's track is transcribed from. Only its stored audio is given (`spans`), never
    the silence the recording puts in for missing packets; `placed` takes a time in what was
    given back to the window's own timeline."""

    def __init__(self, recording: Recording, channel: int, start: int, end: int) -> None:
        self.recording = recording
        self.channel = channel
        self.start = start
        self.end = end
        self.spans = recording.lines[channel].spans(start, end)

    @property
    def seconds(self) -> float:
        """Seconds of audio given (the window's stored audio)."""
        return sum(b - a for a, b in self.spans) / self.recording.format.rate

    def placed(self, spoken: Spoken) -> Spoken:
        """`spoken` (and its words), timed in the audio given, timed from the window's start
        instead."""
        words = spoken.words
        if words is not None:
            words = tuple(
                w._replace(start_s=self._place(w.start_s), end_s=self._place(w.end_s))
                for w in words
            )
        return spoken._replace(
            start_s=self._place(spoken.start_s), end_s=self._place(spoken.end_s), words=words
        )

    def _place(self, given_s: float) -> float:
        rate = self.recording.format.rate
        left = given_s * rate
        for a, b in self.spans:
            if left <= b - a:
                return (a + left - self.start) / rate
            left -= b - a
        return (self.spans[-1][1] - self.start) / rate if self.spans else given_s

    async def texts(self) -> list[str]:
        return []  # audio: the mock says how long it is

    async def facts(self) -> AudioFacts:
        return AudioFacts(self.recording.format, None, self.seconds, 1)

    async def format(self) -> AudioFormat:
        return self.recording.format

    async def pcm(self) -> AsyncIterator[Samples]:
        block = int(TRACK_BLOCK_S * self.recording.format.rate)
        for a, b in self.spans:
            for at in range(a, b, block):
                yield await self.recording.track(self.channel, at, min(at + block, b))

    async def segments(self, max_s: float, search_s: float) -> AsyncIterator[Samples]:
        async for piece in cut_at_quiet_frames(self.pcm(), self.recording.format, max_s, search_s):
            yield piece


class TrackText:
    """One track of a call whose packets are not audio (text, as the mock's callers send): the
    whole track at once. Real providers get UndecodableAudio from it, as from the call."""

    def __init__(self, texts: list[str], problem: str) -> None:
        self._texts = texts
        self.problem = problem
        self.seconds = 0.0

    async def texts(self) -> list[str]:
        return self._texts

    async def facts(self) -> AudioFacts:
        return AudioFacts(None, self.problem, 0.0, 1)

    async def format(self) -> AudioFormat:
        raise UndecodableAudio(self.problem)

    async def pcm(self) -> AsyncIterator[Samples]:
        await self.format()  # raises: text is no audio
        nothing: list[Samples] = []
        for samples in nothing:
            yield samples

    def segments(self, max_s: float, search_s: float) -> AsyncIterator[Samples]:
        return self.pcm()


async def cut_at_quiet_frames(
    pcm: AsyncIterator[Samples], fmt: AudioFormat, max_s: float, search_s: float
) -> AsyncIterator[Samples]:
    """The audio in pieces of at most `max_s` seconds, each cut at the quietest 20 ms frame of
    its last `search_s` seconds, so that a word is rarely cut in two."""
    longest, search = int(max_s * fmt.rate), int(search_s * fmt.rate)
    frame = fmt.frame_samples()
    held: list[Samples] = []
    size = 0
    async for samples in pcm:
        held.append(samples)
        size += len(samples)
        while size >= longest:
            audio = np.concatenate(held)
            cut = quietest_cut(audio, longest - search, longest, frame) or longest
            yield audio[:cut]
            held, size = [audio[cut:]], len(audio) - cut
    if size:
        yield np.concatenate(held)


def timeout_per_audio_s(settings: Settings) -> float:
    """AI_TIMEOUT_PER_AUDIO_S, or the provider's own when it is unset."""
    per_s = settings.ai_timeout_per_audio_s
    return TIMEOUT_PER_AUDIO_S[settings.ai_provider] if per_s is None else per_s


def transcription_allowance_s(settings: Settings, seconds: float) -> float:
    """Extra time a transcription attempt (and the call's AI budget) gets for `seconds` of
    audio: AI_TIMEOUT_PER_AUDIO_S a second of audio, but never so much that the job's own limit
    (JOB_TIMEOUT_S) would cut the run short before the attempts do, which would re-run the call."""
    per_s = timeout_per_audio_s(settings)
    if per_s == 0:
        return 0.0
    room = settings.job_timeout_s - settings.ai_call_budget_s - JOB_MARGIN_S
    return max(0.0, min(per_s * seconds, room))
