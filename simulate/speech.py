"""Real speech for simulated calls: known sentences spoken as 8 kHz mono μ-law (G.711), the audio a
PBX or Twilio sends, cut into 20 ms frames.

The speech comes from espeak-ng (converted by sox, or by core/audio.py's resampler and μ-law
encoder when sox is missing). Without espeak-ng the sentences shipped pre-synthesised in
simulate/recordings/ still speak; anything else raises `SpeechUnavailable` naming the program
to install.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import sys
import wave
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from core.audio import TELEPHONY, Samples, decode, mulaw_encode, resample

SAMPLE_RATE = 8000
BYTES_PER_MS = SAMPLE_RATE // 1000  # μ-law: one byte a sample
FRAME_MS = 20
# μ-law's code for a zero sample: the padding of a short last frame and the gaps between sentences.
MULAW_SILENCE = 0xFF
VOICE = "en-us"  # American English, the accent of the calls the benchmarks simulate
WORDS_PER_MINUTE = 160
INSTALL_HINT = "Debian: apt-get install espeak-ng sox"
RECORDINGS = "recordings"
MANIFEST = "manifest.json"
SYNTHESIS_TIMEOUT_S = 30

Label = Literal["positive", "neutral", "negative"]


@dataclass(frozen=True)
class Sentence:
    text: str
    label: Label  # what a person would say the sentence's sentiment is


# Plain words a caller or an agent would say; the polar ones are polar beyond doubt, so a sentiment
# model that gets them wrong is wrong, not arguable.
SENTENCES: tuple[Sentence, ...] = (
    Sentence("thank you so much, this is excellent service", "positive"),
    Sentence("great, the internet works perfectly now, I am really happy", "positive"),
    Sentence("you have been wonderful and very helpful today", "positive"),
    Sentence("I love the new phone, it is amazing", "positive"),
    Sentence("this is terrible, I am very angry about the broken router", "negative"),
    Sentence("your service is awful and I hate waiting on hold", "negative"),
    Sentence("this is the worst support I have ever had, it is a disaster", "negative"),
    Sentence("I am furious, the bill is wrong again and nobody helps", "negative"),
    Sentence("I am calling about the bill for march", "neutral"),
    Sentence("the engineer arrives at nine tomorrow", "neutral"),
    Sentence("the router is in the living room next to the television", "neutral"),
    Sentence("call me back on tuesday morning", "neutral"),
)

# Shipped pre-synthesised (the shortest of each label), so the simulator speaks without espeak-ng.
_SHIPPED_TEXTS = frozenset(
    {
        "thank you so much, this is excellent service",
        "I love the new phone, it is amazing",
        "this is terrible, I am very angry about the broken router",
        "your service is awful and I hate waiting on hold",
        "the engineer arrives at nine tomorrow",
        "call me back on tuesday morning",
    }
)
SHIPPED: tuple[Sentence, ...] = tuple(s for s in SENTENCES if s.text in _SHIPPED_TEXTS)


class SpeechUnavailable(RuntimeError):
    """Neither espeak-ng nor a shipped recording can speak this text."""


def missing_programs() -> tuple[str, ...]:
    """The programs synthesis needs that are not on PATH (sox is optional: we encode without it)."""
    return tuple(program for program in ("espeak-ng",) if shutil.which(program) is None)


def speech_available() -> bool:
    """Whether any text can be spoken (otherwise only the shipped recordings can)."""
    return not missing_programs()


@functools.lru_cache(maxsize=256)
def synthesise(text: str) -> bytes:
    """`text` spoken as raw 8 kHz mono μ-law; a shipped recording when espeak-ng is missing."""
    if speech_available():
        return _espeak(text)
    shipped = _shipped_recordings().get(text)
    if shipped is not None:
        return shipped
    raise SpeechUnavailable(
        f"cannot speak {text!r}: espeak-ng is not installed ({INSTALL_HINT}); "
        f"without it only the {len(_shipped_recordings())} shipped sentences can be spoken"
    )


def speakable() -> tuple[Sentence, ...]:
    """The sentences this machine can speak: all of them with espeak-ng, else the shipped ones."""
    if speech_available():
        return SENTENCES
    shipped = _shipped_recordings()
    return tuple(sentence for sentence in SENTENCES if sentence.text in shipped)


def frames(audio: bytes, frame_ms: int = FRAME_MS) -> list[bytes]:
    """`audio` cut into `frame_ms` frames (160 bytes for 20 ms), the last padded with silence."""
    if frame_ms <= 0:
        raise ValueError(f"frame_ms must be positive, not {frame_ms}")
    size = frame_ms * BYTES_PER_MS
    cut = [audio[start : start + size] for start in range(0, len(audio), size)]
    if cut and len(cut[-1]) < size:
        cut[-1] = cut[-1].ljust(size, bytes([MULAW_SILENCE]))
    return cut


def linear(audio: bytes) -> bytes:
    """μ-law as signed 16-bit little-endian samples (what Asterisk's slin and FreeSWITCH's L16
    carry), decoded by the service's own codec."""
    return decode(audio, TELEPHONY).astype("<i2").tobytes()


def silence(duration_ms: int) -> bytes:
    """μ-law silence of `duration_ms` (a pause between two sentences)."""
    return bytes([MULAW_SILENCE]) * (duration_ms * BYTES_PER_MS)


def _espeak(text: str) -> bytes:
    wav = _run(
        ["espeak-ng", "--stdin", "--stdout", "-v", VOICE, "-s", str(WORDS_PER_MINUTE)],
        text.encode(),
    )
    if shutil.which("sox") is not None:
        # sox's resampler is better than ours (a proper anti-aliasing filter); ours is the fallback.
        # -D: no dither, so one text always gives the same bytes (dither is random noise).
        to_mulaw = ["-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-e", "mu-law", "-b", "8", "-"]
        return _run(["sox", "-D", "-t", "wav", "-", *to_mulaw], wav)
    samples, rate = _read_wav(wav)
    return mulaw_encode(resample(samples, rate, SAMPLE_RATE))  # the service's own codec


def _run(command: list[str], stdin: bytes) -> bytes:
    try:
        done = subprocess.run(
            command, input=stdin, capture_output=True, timeout=SYNTHESIS_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpeechUnavailable(f"{command[0]} failed: {exc}") from exc
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}"
        raise SpeechUnavailable(f"{command[0]} failed: {reason}")
    return done.stdout


def _read_wav(data: bytes) -> tuple[Samples, int]:
    """16-bit mono samples and their rate; espeak-ng's streamed header claims a huge length, so the
    sample count comes from the bytes actually there."""
    with wave.open(io.BytesIO(data)) as reader:
        if reader.getsampwidth() != 2 or reader.getnchannels() != 1:
            raise SpeechUnavailable("espeak-ng wrote audio that is not 16-bit mono")
        rate = reader.getframerate()
        pcm = reader.readframes(reader.getnframes())
    usable = len(pcm) - len(pcm) % 2
    return np.frombuffer(pcm[:usable], dtype="<i2").astype(np.int16), rate  # WAV: little-endian


def shipped_recordings() -> dict[str, bytes]:
    """The shipped sentences' recordings (8 kHz μ-law) by their text, whatever is installed."""
    return dict(_shipped_recordings())


@functools.lru_cache(maxsize=1)
def _shipped_recordings() -> dict[str, bytes]:
    folder = resources.files("simulate") / RECORDINGS
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return {}
    entries = json.loads(manifest.read_text(encoding="utf-8"))
    return {entry["text"]: (folder / entry["file"]).read_bytes() for entry in entries}


def write_recordings(folder: Path) -> list[dict[str, str]]:
    """Synthesise the shipped sentences into `folder` with their manifest (needs espeak-ng)."""
    if not speech_available():
        raise SpeechUnavailable(f"espeak-ng is not installed ({INSTALL_HINT})")
    folder.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    for sentence in SHIPPED:
        counts[sentence.label] = counts.get(sentence.label, 0) + 1
        name = f"{sentence.label}-{counts[sentence.label]}.ulaw"
        (folder / name).write_bytes(synthesise(sentence.text))
        entries.append({"file": name, "text": sentence.text, "label": sentence.label})
    manifest = json.dumps(entries, indent=2) + "\n"
    (folder / MANIFEST).write_text(manifest, encoding="utf-8")
    return entries


if __name__ == "__main__":
    # `python -m simulate.speech`: regenerate the shipped recordings after changing SHIPPED.
    target = Path(__file__).resolve().parent / RECORDINGS
    for written in write_recordings(target):
        sys.stdout.write(f"{target / written['file']}: {written['text']}\n")
