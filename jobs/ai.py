"""The external AI behind a small interface, its error classes, and the shipped flaky mock.

AIError                   base of everything the provider can do wrong
├── TransientAIError      worth retrying: 5xx, timeouts, 429 (with retry_after)
└── PermanentAIError      never retried: bad input, 4xx other than 429
    └── UndecodableAudio  the call's data is not audio we can decode (jobs/audio.py)

Providers: this mock (AI_PROVIDER=mock, the default), jobs/ai_local.py (local: faster-whisper and
vaderSentiment, offline) and jobs/ai_openai.py (openai: any OpenAI-compatible service); built by
jobs/resources.py's make_ai_client. Each gets a track's window of the call (jobs/audio.py): the
mock reads the packets' data as text, the real providers read the decoded audio.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from core.audio import AudioFormat, Samples
from core.conversation import split_long
from db.record import Sentiment as Sentiment  # what a provider's scoring answers: the record's


class AIError(Exception):
    pass


# The current attempt's end as wall-clock time (time.time(), which every process of the machine
# shares), set by jobs/attempts.py around each request. asyncio's timeout stops the request's
# coroutine, not work it handed to another process: a provider that does so (jobs/ai_local.py's
# pool) passes this on, so that work stops too and the retry does not queue behind it.
attempt_deadline: ContextVar[float | None] = ContextVar("attempt_deadline", default=None)


class TransientAIError(AIError):
    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentAIError(AIError):
    pass


class Word(NamedTuple):
    """One word of a Spoken stretch and its times (seconds, as the stretch's)."""

    start_s: float
    end_s: float
    text: str


class Spoken(NamedTuple):
    """A stretch of speech a transcription found: seconds from the start of the audio given.
    `words`: its words' times, when they were asked for (audio redaction) and the provider gave
    them; None when it did not (the whole stretch is then all that can be silenced)."""

    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True, slots=True)
class AudioFacts:
    format: AudioFormat | None  # None: undecodable, for `problem`
    problem: str | None
    seconds: float  # how long the audio is, gaps included (0 when undecodable)
    tracks: int


class SpeechSource(Protocol):
    """What a provider transcribes: one track's window of a call (jobs/audio.py's TrackAudio), or
    a track of text packets (TrackText). Defined with the providers' own
    interface, so that jobs/audio.py builds on jobs/ai.py and not the other way round."""

    async def texts(self) -> list[str]: ...

    async def facts(self) -> AudioFacts: ...

    async def format(self) -> AudioFormat: ...

    def pcm(self) -> AsyncIterator[Samples]: ...

    def pieces(self, max_s: float, search_s: float) -> AsyncIterator[Samples]: ...


class AIClient(Protocol):
    async def transcribe_segments(
        self, call_id: str, audio: SpeechSource, *, words: bool = False
    ) -> list[Spoken]:
        """What was said in `audio` (one track's window of a call), as timed stretches in
        order; a provider that gives no times answers one stretch over the whole audio.
        `words`: give each stretch's word times too (REDACT_PII=transcript,audio silences a
        redacted span by them); a provider that cannot leaves them None. Only asked for when
        wanted: they cost the local model CPU and a hosted one a larger answer."""

    async def analyse_sentiment(self, call_id: str, transcript: str) -> Sentiment: ...

    async def aclose(self) -> None:
        """Let go of what the client holds (a process pool, HTTP connections)."""


_POSITIVE = frozenset(
    {"good", "great", "happy", "thanks", "thank", "excellent", "love", "perfect", "resolved"}
)
_NEGATIVE = frozenset(
    {"bad", "terrible", "angry", "problem", "broken", "hate", "awful", "refund", "worst", "unhappy"}
)


def transcript_of(chunks: Sequence[str]) -> str:
    """The mock's transcript: the packets' data in sequence order, one space between."""
    return " ".join(chunk.strip() for chunk in chunks if chunk.strip())


async def mock_transcript(audio: SpeechSource) -> str:
    """The mock's transcript: text packets' data joined (what the demo's callers send); of a call
    of real audio, which it cannot understand, a short line saying how much there was, never the
    audio's base64."""
    spoken = transcript_of(await audio.texts())
    if spoken:
        return spoken
    facts = await audio.facts()
    if facts.format is None or facts.seconds == 0:
        return ""
    return f"[{facts.seconds:.1f} s of audio]"


async def mock_spoken(audio: SpeechSource) -> list[Spoken]:
    """The mock's transcript over the whole audio given: one stretch, or, for more text than an
    utterance may hold (a call of text packets can send megabytes), one a cap's worth of it."""
    text = await mock_transcript(audio)
    if not text:
        return []
    return [Spoken(*piece) for piece in split_long(0.0, (await audio.facts()).seconds, text)]


def sentiment_of(transcript: str) -> Sentiment:
    """The mock's sentiment: positive minus negative keywords, over the keywords found."""
    words = re.findall(r"[a-z']+", transcript.lower())
    pos = sum(w in _POSITIVE for w in words)
    neg = sum(w in _NEGATIVE for w in words)
    if pos == neg:
        return Sentiment(label="neutral", score=0.0)
    score = round((pos - neg) / (pos + neg), 3)
    return Sentiment(label="positive" if score > 0 else "negative", score=score)


class MockAI:
    """A flaky provider: each request fails with probability `failure_rate` after a latency drawn
    uniformly from [latency_min_s, latency_max_s]. With a seed, each call's run is repeatable
    whatever else the worker does concurrently (the draws are keyed by call, step and request).

    Outage bursts: with `outage_period_s`, the provider is down for the first
    `outage_duration_s` of every period of wall-clock time (so every worker sees the same
    outage), and every request then fails fast with a 503, as a real provider in trouble does."""

    def __init__(
        self,
        failure_rate: float = 0.25,
        latency_min_s: float = 1.0,
        latency_max_s: float = 3.0,
        seed: int | None = None,
        outage_period_s: float | None = None,
        outage_duration_s: float = 0.0,
    ) -> None:
        self.failure_rate = failure_rate
        self.latency = (latency_min_s, latency_max_s)
        self.seed = seed
        self.outage = (outage_period_s, outage_duration_s)
        self._requests: dict[tuple[str, str], int] = {}
        self._fallback = random.Random()

    def _rng(self, call_id: str, step: str) -> random.Random:
        if len(self._requests) > 100_000:  # a long-lived worker must not grow without bound
            self._requests.clear()
        n = self._requests.get((call_id, step), 0)
        self._requests[(call_id, step)] = n + 1
        if self.seed is None:
            return self._fallback
        return random.Random(f"{self.seed}:{call_id}:{step}:{n}")

    def in_outage(self, now: float) -> bool:
        period, duration = self.outage
        return period is not None and now % period < duration

    async def _request(self, call_id: str, step: str) -> None:
        if self.in_outage(time.time()):
            await asyncio.sleep(0.01)
            raise TransientAIError(f"mock AI: {step} failed (simulated outage burst, 503)")
        rng = self._rng(call_id, step)
        await asyncio.sleep(rng.uniform(*self.latency))
        if rng.random() < self.failure_rate:
            raise TransientAIError(f"mock AI: {step} failed (simulated 503 Service Unavailable)")

    async def transcribe_segments(
        self, call_id: str, audio: SpeechSource, *, words: bool = False
    ) -> list[Spoken]:
        # The mock has no word times (`words` is ignored): a redacted utterance is silenced whole.
        await self._request(call_id, "transcription")
        return await mock_spoken(audio)

    async def analyse_sentiment(self, call_id: str, transcript: str) -> Sentiment:
        await self._request(call_id, "sentiment")
        return sentiment_of(transcript)

    async def aclose(self) -> None:
        pass
