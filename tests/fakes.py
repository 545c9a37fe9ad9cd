"""Test doubles at the true external boundary: the AI provider."""

from __future__ import annotations

from collections import defaultdict

from jobs.ai import AIError, Sentiment, SpeechSource, Spoken, mock_spoken, sentiment_of


class ScriptedAI:
    """Answers like the mock provider, but fails exactly as scripted: `fail(step, *errors)`
    queues errors raised by the next requests for that step, for every call."""

    def __init__(self) -> None:
        self.script: dict[str, list[AIError]] = defaultdict(list)
        self.requests: list[tuple[str, str]] = []

    def fail(self, step: str, *errors: AIError) -> None:
        self.script[step].extend(errors)

    def _next(self, call_id: str, step: str) -> None:
        self.requests.append((call_id, step))
        if self.script[step]:
            raise self.script[step].pop(0)

    def count(self, step: str) -> int:
        return sum(1 for _, s in self.requests if s == step)

    async def transcribe_segments(
        self, call_id: str, audio: SpeechSource, *, words: bool = False
    ) -> list[Spoken]:
        self._next(call_id, "transcription")
        return await mock_spoken(audio)

    async def analyse_sentiment(self, call_id: str, transcript: str) -> Sentiment:
        self._next(call_id, "sentiment")
        return sentiment_of(transcript)

    async def aclose(self) -> None:
        pass
