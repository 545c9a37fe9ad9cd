"""bench/ai_quality.py's corpus, made at run time: known sentences (clearly positive, negative or
neutral, with numbers and names) spoken by several espeak-ng voices, as 8 kHz μ-law (what a PBX
sends), clean and with noise; and how a transcript is scored against what was said (normalised
words, word error rate)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import wave
from collections import Counter
from dataclasses import dataclass
from io import BytesIO

import numpy as np

from core.audio import TELEPHONY, Samples, decode, mulaw_encode, resample

WORDS_PER_MINUTE = 160
# espeak-ng voices: American, British (received pronunciation) and a female variant of the
# American one (`espeak-ng --voices=variant` lists the variants).
VOICES = ("en-us", "en-gb-x-rp", "en-us+f3")
NOISE_SNR_DB = 10.0  # white noise 10 dB below the speech: a poor mobile line
CONDITIONS = ("clean", "noisy")


@dataclass(frozen=True)
class Sentence:
    text: str
    label: str  # positive | negative | neutral: beyond doubt, for a person


def _s(label: str, *texts: str) -> list[Sentence]:
    return [Sentence(text, label) for text in texts]


SENTENCES: tuple[Sentence, ...] = (
    *_s(
        "positive",
        "thank you so much, this is excellent service",
        "great, the internet works perfectly now, I am really happy",
        "you have been wonderful and very helpful today",
        "I love the new phone, it is amazing",
        "Sarah fixed it in five minutes, that was brilliant",
        "the refund of forty dollars arrived, thank you, I am delighted",
        "perfect, the engineer David was friendly and fast",
        "wonderful news, my bill is twenty percent lower, thanks a lot",
    ),
    *_s(
        "negative",
        "this is terrible, I am very angry about the broken router",
        "your service is awful and I hate waiting on hold",
        "this is the worst support I have ever had, it is a disaster",
        "I am furious, the bill is wrong again and nobody helps",
        "I waited three hours and the technician never came, this is horrible",
        "I was charged ninety dollars twice, I am really upset",
        "Michael promised a call back on Monday and it never happened, very disappointing",
        "the line keeps dropping, it is useless and I am fed up",
    ),
    *_s(
        "neutral",
        "I am calling about the bill for March",
        "the engineer arrives at nine tomorrow",
        "the router is in the living room next to the television",
        "call me back on Tuesday morning",
        "my account number is four seven two nine",
        "my name is James Wilson and I live in London",
        "please send the letter to twelve Oak Street",
        "the contract started on the first of June and lasts two years",
    ),
)


def missing_programs() -> tuple[str, ...]:
    return tuple(p for p in ("espeak-ng",) if shutil.which(p) is None)


@functools.lru_cache(maxsize=512)
def spoken(text: str, voice: str) -> bytes:
    """`text` spoken by espeak-ng's `voice` as raw 8 kHz μ-law."""
    wav = _run(["espeak-ng", "--stdout", "-v", voice, "-s", str(WORDS_PER_MINUTE), text])
    if shutil.which("sox"):  # sox's resampler has a proper anti-aliasing filter
        out = ["-t", "raw", "-r", "8000", "-c", "1", "-e", "mu-law", "-b", "8", "-"]
        return _run(["sox", "-D", "-t", "wav", "-", *out], wav)
    samples, rate = _read(wav)
    return mulaw_encode(resample(samples, rate, TELEPHONY.rate))


def wideband(text: str, voice: str) -> Samples:
    """`text` spoken at 16 kHz, 16-bit: before the telephone (what Whisper was trained on)."""
    wav = _run(["espeak-ng", "--stdout", "-v", voice, "-s", str(WORDS_PER_MINUTE), text])
    samples, rate = _read(wav)
    return resample(samples, rate, 16_000)


def _read(wav: bytes) -> tuple[Samples, int]:
    """espeak-ng's WAV (its header claims a huge length: the bytes there are what counts)."""
    with wave.open(BytesIO(wav)) as reader:
        rate, pcm = reader.getframerate(), reader.readframes(reader.getnframes())
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.int16), rate


def _run(command: list[str], stdin: bytes = b"") -> bytes:
    return subprocess.run(command, input=stdin, capture_output=True, check=True, timeout=60).stdout


def with_noise(mulaw: bytes, seed: int, snr_db: float = NOISE_SNR_DB) -> bytes:
    """The same speech with white noise `snr_db` below its power, re-encoded as μ-law."""
    speech = decode(mulaw, TELEPHONY).astype(np.float64)
    voiced = speech[np.abs(speech) > 100]  # the speech's power, not the pauses'
    power = float(np.mean(voiced**2)) if len(voiced) else 1.0
    noise = np.random.default_rng(seed).normal(0, np.sqrt(power / 10 ** (snr_db / 10)), len(speech))
    return mulaw_encode(np.clip(speech + noise, -32768, 32767).astype(np.int16))


def utterance(sentence: Sentence, voice: str, condition: str, seed: int) -> Samples:
    """One utterance of the corpus as 16-bit PCM at 8 kHz, decoded from μ-law as the worker does."""
    mulaw = spoken(sentence.text, voice)
    if condition == "noisy":
        mulaw = with_noise(mulaw, seed)
    return decode(mulaw, TELEPHONY)


# Scoring: lower case, no punctuation, numbers as words, common contractions expanded (what
# Whisper's own English normaliser does, in small), so "$40" and "forty dollars" are one answer.
_ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
]  # fmt: skip
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORDINALS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip
_CONTRACTIONS = {
    "i'm": "i am", "it's": "it is", "that's": "that is", "don't": "do not", "can't": "cannot",
    "won't": "will not", "you're": "you are", "we're": "we are", "i've": "i have",
    "isn't": "is not", "didn't": "did not", "doesn't": "does not", "i'll": "i will",
    "there's": "there is", "you've": "you have", "wasn't": "was not", "he's": "he is",
}  # fmt: skip


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + (" " + number_words(rest) if rest else "")
    if n < 1_000_000:
        rest = n % 1000
        return number_words(n // 1000) + " thousand" + (" " + number_words(rest) if rest else "")
    return " ".join(_ONES[int(d)] for d in str(n))  # beyond the corpus: digit by digit


def _ordinal(n: int) -> str:
    said = number_words(n).split()
    last = said[-1]
    said[-1] = _ORDINALS.get(last, (last[:-1] + "ieth") if last.endswith("y") else last + "th")
    return " ".join(said)


def words(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'")  # a typographic apostrophe
    # Four digits or more are an account or phone number: said digit by digit.
    text = re.sub(r"(?<![\d,])\d{4,}\b", lambda m: " ".join(m[0]), text)
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,200
    text = re.sub(r"[$£€](\d+)", r"\1 dollars", text)
    text = re.sub(r"(\d)%", r"\1 percent", text)
    text = re.sub(r"(\d+)(st|nd|rd|th)\b", lambda m: _ordinal(int(m[1])), text)
    text = re.sub(r"\d+", lambda m: " " + number_words(int(m[0])) + " ", text)
    found = re.findall(r"[a-z]+(?:'[a-z]+)?", text)
    return " ".join(_CONTRACTIONS.get(w, w) for w in found).split()


def edit_distance(said: list[str], heard: list[str]) -> int:
    """Word-level Levenshtein distance: substitutions, insertions and deletions."""
    row = list(range(len(heard) + 1))
    for i, word in enumerate(said, start=1):
        diagonal, row[0] = row[0], i
        for j, other in enumerate(heard, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != other))
    return row[-1]


def heard_share(said: str, heard: str) -> float:
    """The share of the words said of more than three letters that the transcript has."""
    long_words = Counter(w for w in words(said) if len(w) > 3)
    return sum((long_words & Counter(words(heard))).values()) / max(sum(long_words.values()), 1)
