"""AI_PROVIDER=local: real, offline, nothing downloaded at run time. Speech to text with
pocketsphinx 5's en-us model (its weights ship in the wheel), sentiment with vaderSentiment's
lexicon (which ships its data too).

Both are CPU-bound, so they run in a pool of processes, never on the worker's event loop; each
process loads the speech model once. The pool has as many processes as calls may be transcribed at
once: AI_MAX_CONCURRENCY capped by the cores (jobs/resources.py's ai_concurrency), the same limit
that bounds every provider. A call is sent to the pool a segment at a time (at most SEGMENT_S
seconds, cut at a quiet frame), so memory stays bounded and an attempt that timed out stops at
the end of its current segment.

The model is trained on 16 kHz speech: telephone audio (8 kHz) is resampled first, and lacks
everything above 4 kHz, so expect a word error rate far from a modern model's (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from core.audio import resample
from jobs.ai import Sentiment, TransientAIError
from jobs.audio import CallAudio

SEGMENT_S = 20.0  # audio sent to the model at once
SEARCH_S = 5.0  # the cut is the quietest frame of the segment's last seconds
MODEL_RATE = 16_000  # the en-us model's sample rate
# Fewer active paths than pocketsphinx's default (30000) and no second, flat search: half the
# CPU, and no more word errors, on bench/ai_quality.py's corpus (BENCHMARKS.md).
DECODER_OPTIONS: dict[str, Any] = {"maxhmmpf": 3000, "fwdflat": False}
POSITIVE_FROM, NEGATIVE_FROM = 0.05, -0.05  # VADER's own thresholds on its compound score


class LocalAI:
    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    async def transcribe(self, call_id: str, audio: CallAudio) -> str:
        fmt = await audio.format()
        heard: list[str] = []
        async for segment in audio.segments(SEGMENT_S, SEARCH_S):
            text = await self._run(recognise, segment.tobytes(), fmt.rate)
            if text:
                heard.append(text)
        return " ".join(heard)

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
                initializer=load_model,
            )
        return self._pool


# What a pool process holds: the decoder, loaded once, and the normalisation it starts from.
_model: Any = None
_initial_cmn: str = ""
_vader: Any = None


def load_model() -> None:
    global _model, _initial_cmn
    # Imported here: the worker itself never needs it. No type hints ship with it.
    from pocketsphinx import Decoder  # type: ignore[import-untyped]

    _model = Decoder(samprate=MODEL_RATE, loglevel="FATAL", **DECODER_OPTIONS)
    _initial_cmn = _model.get_cmn()


def recognise(pcm: bytes, rate: int) -> str:
    """The words in `pcm` (16-bit mono at `rate`), one utterance."""
    if _model is None:
        load_model()
    samples = resample(np.frombuffer(pcm, dtype=np.int16), rate, MODEL_RATE)
    if len(samples) < MODEL_RATE // 10:  # less than a word; the decoder refuses an empty one
        return ""
    # The decoder carries its noise estimate and feature normalisation from one utterance to
    # the next; starting every segment afresh makes a transcript independent of the calls before.
    _model.reinit_feat()
    _model.set_cmn(_initial_cmn)
    _model.start_utt()
    _model.process_raw(samples.tobytes(), full_utt=True)
    _model.end_utt()
    hypothesis = _model.hyp()
    return str(hypothesis.hypstr).strip() if hypothesis is not None else ""


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
        return Sentiment("positive", score)
    if score <= NEGATIVE_FROM:
        return Sentiment("negative", score)
    return Sentiment("neutral", score)
