"""What the AI providers are given of a call: one track's window of its recording
(core/recording.py, read lazily: a block at a time, and in pieces cut at quiet frames by
core/audio.py's quiet_pieces), or a track of text packets; and the extra time a transcription
gets for its audio.

Data that is not audio we can decode raises UndecodableAudio for a real provider: a permanent
failure, so the call ends FAILED with the reason, never retried. The mock provider decodes
nothing: it reads text packets' data (`texts`), and says how much audio there is otherwise
(`facts`), so its transcript of a real call stays short.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from core.audio import AudioFormat, Samples, quiet_pieces
from core.recording import Recording
from jobs.ai import AudioFacts, PermanentAIError, Spoken
from settings import Settings

# Extra time a transcription may take per second of audio when AI_TIMEOUT_PER_AUDIO_S is unset:
# the mock ignores the audio; the local model needs a fraction of a CPU second per second of
# audio (BENCHMARKS.md), more when the cores are shared; a hosted model is faster.
TIMEOUT_PER_AUDIO_S = {"mock": 0.0, "local": 0.5, "openai": 0.5}
JOB_MARGIN_S = 30.0  # left of JOB_TIMEOUT_S for the flush and the final writes
# What a track's window is read a block at a time: 160 KB of PCM at 8 kHz, 960 KB at 48 kHz;
# a provider's piece (at most its max_s, cut at a quiet frame) is held besides.
TRACK_BLOCK_S = 10.0


class UndecodableAudio(PermanentAIError):
    """The call's data is not audio we can decode: the call ends FAILED, never retried."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"the call's audio cannot be decoded: {problem}")


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

    async def pieces(self, max_s: float, search_s: float) -> AsyncIterator[Samples]:
        async for piece in quiet_pieces(self.pcm(), self.recording.format, max_s, search_s):
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

    def pieces(self, max_s: float, search_s: float) -> AsyncIterator[Samples]:
        return self.pcm()


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
