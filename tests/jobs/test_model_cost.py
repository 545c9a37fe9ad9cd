"""The local model's cost bounded whatever the audio: repetitive speech (a looped recording, as
an IVR prompt or a hold message is) is decoded at most twice a 30 s pass (temperature 0, then
0.2), never again at every higher temperature; a silent window costs no pass at all; and a
transcription whose attempt timed out stops at the attempt's deadline, in the pool process too,
instead of running on while the retry waits behind it. The CPU seconds themselves are the
benchmark's (bench/local_model.py), not these tests'."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

from core.audio import TELEPHONY
from jobs import whisper
from jobs.ai import TransientAIError, attempt_deadline
from jobs.ai_local import LocalAI, PcmAudio
from jobs.whisper import PastDeadline, transcribe_pcm
from tests.jobs.test_ai_local import HAPPY, TUESDAY, heard, pcm, recorded, text_of


class CountingModel:
    """CTranslate2's Whisper with its encoder and decoder passes counted (faster-whisper's
    temperature fallback calls the decoder again on the same encoder pass)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.encoded = 0
        self.decoded = 0

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        self.encoded += 1
        return self.model.encode(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self.decoded += 1
        return self.model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


@pytest.fixture
def counted() -> Iterator[CountingModel]:
    whisper.load_model()
    real = whisper._model.model
    counting = CountingModel(real)
    whisper._model.model = counting
    try:
        yield counting
    finally:
        whisper._model.model = real


def test_repetitive_speech_is_heard_and_decoded_at_most_twice_a_pass(counted):
    # The same two sentences said over and over for 30 s: Whisper's text compresses well (gzip
    # ratio above 2.4), which made faster-whisper's defaults decode the pass again at five
    # temperatures (9-11 CPU s instead of 1.6-2.5; jobs/whisper.py's DECODING).
    said = recorded(HAPPY) + recorded(TUESDAY)
    looped = np.tile(pcm(said), int(30 * 8000 / len(said)) + 1)[: 30 * 8000]

    segments = transcribe_pcm(looped, 8000, words=True)

    assert heard(HAPPY + " " + TUESDAY, text_of(segments)) >= 0.6, segments
    assert counted.encoded >= 1
    assert counted.decoded <= 2 * counted.encoded  # temperature 0, then at most 0.2


def test_a_window_the_voice_filter_finds_silent_costs_no_encoder_pass(counted):
    # A track is silent while the other party talks: Silero's filter (a tenth of a CPU second
    # for 30 s) leaves Whisper nothing to encode.
    hiss = np.random.default_rng(1).normal(0, 30, 30 * 8000).astype(np.int16)

    assert transcribe_pcm(np.zeros(30 * 8000, dtype=np.int16), 8000, words=True) == []
    assert transcribe_pcm(hiss, 8000, words=True) == []
    assert counted.encoded == counted.decoded == 0


def test_a_transcription_past_its_deadline_stops_before_the_model_runs(counted):
    with pytest.raises(PastDeadline):
        transcribe_pcm(pcm(recorded(HAPPY)), 8000, deadline=time.time() - 1)

    assert counted.encoded == counted.decoded == 0


class Clock:
    """time.time() as the test sets it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


class LazyModel:
    """A model whose segments come one by one, each a pass that takes the clock a second on."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.passes = 0

    def transcribe(self, audio: Any, **options: Any) -> tuple[Iterator[Any], None]:
        def segments() -> Iterator[Any]:
            for n in range(3):
                self.passes += 1
                self.clock.now += 1.0
                yield _Said(float(n), n + 1.0, f" pass {n}", None)

        return segments(), None


class _Said:
    def __init__(self, start: float, end: float, text: str, words: Any) -> None:
        self.start, self.end, self.text, self.words = start, end, text, words


def test_a_deadline_passing_mid_transcription_stops_pulling_the_models_segments(monkeypatch):
    clock = Clock(1000.0)
    model = LazyModel(clock)
    monkeypatch.setattr(whisper, "time", clock)
    monkeypatch.setattr(whisper, "_model", model)
    audio = np.zeros(8000 * 3, dtype=np.int16)

    assert len(transcribe_pcm(audio, 8000)) == 3  # no deadline: every pass
    model.passes = 0
    with pytest.raises(PastDeadline):
        transcribe_pcm(audio, 8000, deadline=clock.now + 1.5)

    assert model.passes == 2  # the pass that ran past the deadline, and none after it


@pytest.fixture(scope="module")
async def one_process() -> AsyncIterator[LocalAI]:
    ai = LocalAI(processes=1)
    yield ai
    await ai.aclose()


async def test_a_pool_job_whose_attempt_timed_out_stops_instead_of_transcribing(one_process):
    audio = PcmAudio(pcm(recorded(HAPPY)), TELEPHONY)
    ends = attempt_deadline.set(time.time() - 1)  # as jobs/attempts.py sets it; already past
    try:
        with pytest.raises(TransientAIError, match="deadline"):
            await one_process.transcribe_segments("call", audio, words=True)
    finally:
        attempt_deadline.reset(ends)

    pid = await one_process._run(os.getpid)  # the pool's one process is free and alive
    assert pid != os.getpid()
    found = await one_process.transcribe_segments("call", audio, words=True)
    assert heard(HAPPY, text_of([whisper.Segment(s.start_s, s.end_s, s.text) for s in found]))
