"""AI_PROVIDER=local: real, offline, nothing downloaded at run time. Speech to text with Whisper
through faster-whisper (jobs/whisper.py: CTranslate2, int8, the bundled tiny.en or AI_LOCAL_MODEL),
sentiment with vaderSentiment's lexicon (which ships its data too).

Both are CPU-bound, so they run in a pool of processes, never on the worker's event loop; each
process loads the speech model once and runs it on one thread. The pool has as many processes as
calls may be transcribed at once: AI_MAX_CONCURRENCY capped by the cores (jobs/resources.py's
ai_concurrency), the same limit that bounds every provider. A call is sent to the pool a piece at
a time (at most SEGMENT_S seconds, cut at a quiet frame), so memory stays bounded; an attempt
that timed out sends no further piece, and the piece in the pool stops at the attempt's deadline
(jobs/ai.py's attempt_deadline), so a retry does not wait behind work nobody will read.

Telephone audio (8 kHz) is resampled to Whisper's 16 kHz first; it has nothing above 4 kHz, which
costs some accuracy (BENCHMARKS.md has the word error rates).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from core.audio import AudioFormat, Samples, quiet_pieces
from jobs.ai import Sentiment, Spoken, TransientAIError, Word, attempt_deadline
from jobs.packing import Packer
from jobs.whisper import PastDeadline, Segment, load_model, model_folder, transcribe_pcm

# Whisper hears 30 s at a time (shorter audio is padded to it, so its encoder costs the same):
# pieces of 25 to 30 s, cut at the quietest frame of their last SEARCH_S, are one window each.
SEGMENT_S = 30.0
SEARCH_S = 5.0
# A call's utterances are cut at the pauses between words, so a transcript asks Whisper for word
# times (a quarter more CPU): without them its segments run two or three sentences together, and
# the sentiment of clearly polar utterances came out right 69% of the time on a clean line
# against 92% (bench/ai_quality.py, one run each, 2026-12-06). Two tracks' pieces heard in one
# pass (jobs/packing.py) are told apart by them too.
WORDS = True
POSITIVE_FROM, NEGATIVE_FROM = 0.05, -0.05  # VADER's own thresholds on its compound score


class Audio(Protocol):
    """What the local engine reads of a call (TrackAudio has it): its format, and its audio in
    pieces of at most `max_s` seconds, each cut at a quiet frame of its last `search_s`."""

    async def format(self) -> AudioFormat: ...

    def pieces(self, max_s: float, search_s: float) -> AsyncIterator[Samples]: ...


class PcmAudio:
    """Audio already in memory (16-bit PCM) as an Audio, cut as a call's window is."""

    def __init__(self, samples: Samples, fmt: AudioFormat) -> None:
        self.samples = samples
        self.fmt = fmt

    async def format(self) -> AudioFormat:
        return self.fmt

    async def pieces(self, max_s: float, search_s: float) -> AsyncIterator[Samples]:
        async for piece in quiet_pieces(_once(self.samples), self.fmt, max_s, search_s):
            yield piece


async def _once(samples: Samples) -> AsyncIterator[Samples]:
    yield samples


class LocalAI:
    def __init__(self, processes: int, model: str | None = None, pack: bool = False) -> None:
        """`model`: AI_LOCAL_MODEL (a CTranslate2 Whisper folder), None for the bundled tiny.en;
        checked here, so a wrong one stops the worker at start. `pack`: two tracks' pieces that
        fit in one pass are heard in one (jobs/packing.py); only with LOCAL_WINDOW_SECONDS' short
        windows (jobs/resources.py). Not with 30 s windows: there only a call's last, short
        pieces fit together, and so heard tiny.en made up a line ("See you in the next video!")
        over the end of a card number and missed an e-mail address that it heard alone
        (tests/jobs/test_audio_redaction.py), for an encoder pass a call saved."""
        self.processes = processes
        self.model = str(model_folder(model))
        self._pool: ProcessPoolExecutor | None = None
        self._packer = Packer(self._run) if pack else None

    async def transcribe_segments(
        self, call_id: str, audio: Audio, *, words: bool = False
    ) -> list[Spoken]:
        """The audio's speech as timed stretches, in seconds from its start: a piece at a time
        through the pool (jobs/whisper.py's transcribe_pcm for each, or, with `pack`, when the
        call's other track has a piece in the pool at the same time and both fit in Whisper's
        30 s, one pass for the two: jobs/packing.py), cut at the pauses between words (WORDS);
        with `words`, each stretch carries its words' times (audio redaction).
        The attempt's deadline goes with each piece: a piece still in the pool when the attempt
        timed out stops there (at the end of its current 30 s pass) instead of running on."""
        fmt = await audio.format()
        deadline = attempt_deadline.get()
        timed: list[Spoken] = []
        offset_s = 0.0
        async for piece in audio.pieces(SEGMENT_S, SEARCH_S):
            if self._packer is None:
                found = await self._run(transcribe_pcm, piece, fmt.rate, WORDS or words, deadline)
            else:
                found = await self._packer.heard(call_id, piece, fmt.rate, deadline)
            timed += [_spoken(s, offset_s, words) for s in found]
            offset_s += len(piece) / fmt.rate
        return timed

    async def start(self) -> None:
        """Start every model process now, each loading the model (0.8 CPU s and a second or
        two: imports, weights), so that a call's first window does not wait for it, nor is it
        counted in a call's cost (bench/local_model.py)."""
        await asyncio.gather(*(self._run(os.getpid) for _ in range(self.processes)))

    async def analyse_sentiment(self, call_id: str, transcript: str) -> Sentiment:
        result: Sentiment = await self._run(vader_sentiment, transcript)
        return result

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def _run(self, function: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), function, *args)
        except PastDeadline as exc:  # the attempt's time ran out while the piece was heard
            raise TransientAIError(f"local model: {exc}") from exc
        except BrokenProcessPool as exc:
            # A model process died (killed, out of memory): the next attempt gets a fresh pool.
            broken, self._pool = self._pool, None
            if broken is not None:
                broken.shutdown(wait=False, cancel_futures=True)
            raise TransientAIError(f"local model: a model process died ({exc})") from exc

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the worker has threads and open sockets a fork would copy.
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=start_model_process,
                initargs=(self.model, os.getpid()),
            )
        return self._pool


def start_model_process(model: str, worker_pid: int) -> None:
    """A pool process's start: it leaves when its worker is gone, then loads the model."""
    exit_with_parent(worker_pid)
    load_model(model)


# How often a model process looks for its worker. A worker killed outright (SIGKILL, the OOM
# killer, a supervisor's last resort) cannot shut its pool down, and its model processes would
# wait on their job queue for ever, each holding a model in memory: seen here, two of them still
# there 88 minutes after their worker was killed.
PARENT_CHECK_S = 1.0


def exit_with_parent(parent_pid: int, every_s: float = PARENT_CHECK_S) -> threading.Thread:
    """Leave this process at once when `parent_pid` is no longer its parent (a killed parent's
    children are re-parented), watched from a daemon thread. Not prctl's PR_SET_PDEATHSIG: that
    fires when the *thread* that started the process ends, not the process, and which thread
    starts a pool's processes is the pool's business (the submitting one, or its manager's)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(0)  # nothing to hand back to: whoever asked for the work is gone

    watcher = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    watcher.start()
    return watcher


def _spoken(segment: Segment, offset_s: float, words: bool) -> Spoken:
    timed = (
        tuple(Word(a + offset_s, b + offset_s, text) for a, b, text in segment.words)
        if words and segment.words
        else None
    )
    return Spoken(segment.start_s + offset_s, segment.end_s + offset_s, segment.text, timed)


_vader: Any = None  # a pool process's lexicon, loaded once


def vader_sentiment(text: str) -> Sentiment:
    """VADER's compound score in [-1, 1] and its label (±0.05 thresholds)."""
    global _vader
    if _vader is None:
        from vaderSentiment.vaderSentiment import (  # type: ignore[import-untyped]
            SentimentIntensityAnalyzer,
        )

        _vader = SentimentIntensityAnalyzer()
    score = round(float(_vader.polarity_scores(text)["compound"]), 3)
    if score >= POSITIVE_FROM:
        return Sentiment(label="positive", score=score)
    if score <= NEGATIVE_FROM:
        return Sentiment(label="negative", score=score)
    return Sentiment(label="neutral", score=score)
