"""simulate/speech.py: real speech as 8 kHz μ-law, shipped recordings, 20 ms frames."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator

import pytest

from core.audio import TELEPHONY, decode
from simulate import speech
from simulate.speech import SENTENCES, SHIPPED, SpeechUnavailable
from tests.needs import needs_program

needs_espeak = needs_program(
    "espeak-ng", "espeak-ng is not installed (Debian: apt-get install espeak-ng sox)"
)

# Without sox, synthesise() already uses our encoder: comparing it with sox needs sox.
needs_sox = needs_program(
    "sox", "sox is not installed, so our encoder cannot be compared with it (apt-get install sox)"
)


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    # synthesise() caches per text: a test that hides a program must not see an earlier answer.
    speech.synthesise.cache_clear()
    yield
    speech.synthesise.cache_clear()


def hiding(*programs: str) -> Callable[[str], str | None]:
    real = shutil.which

    def which(name: str) -> str | None:
        return None if name in programs else real(name)

    return which


def rms(samples: list[int]) -> float:
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def test_frames_are_160_bytes_for_20_ms_and_the_last_is_padded_with_silence():
    audio = bytes(range(200)) * 2  # 400 bytes: two whole frames and 80 bytes
    cut = speech.frames(audio)
    assert [len(frame) for frame in cut] == [160, 160, 160]
    assert b"".join(cut)[:400] == audio
    assert cut[-1][80:] == bytes([speech.MULAW_SILENCE]) * 80


def test_frames_of_other_lengths_and_of_nothing():
    assert [len(frame) for frame in speech.frames(bytes(800), frame_ms=50)] == [400, 400]
    assert speech.frames(b"") == []
    with pytest.raises(ValueError, match="frame_ms"):
        speech.frames(bytes(10), frame_ms=0)


def test_silence_lasts_what_it_says():
    assert speech.silence(20) == bytes([0xFF]) * 160


def mulaw_decode(audio: bytes) -> list[int]:
    return [int(sample) for sample in decode(audio, TELEPHONY)]


def test_the_corpus_has_clearly_labelled_sentences_of_every_polarity():
    labels = [sentence.label for sentence in SENTENCES]
    assert {label: labels.count(label) for label in set(labels)} == {
        "positive": 4,
        "negative": 4,
        "neutral": 4,
    }
    assert len({sentence.text for sentence in SENTENCES}) == len(SENTENCES)
    assert {sentence.label for sentence in SHIPPED} == {"positive", "negative", "neutral"}


@needs_espeak
def test_synthesis_is_speech_at_8_khz_mulaw_and_the_same_every_time():
    text = SENTENCES[0].text
    audio = speech.synthesise(text)
    assert 1.0 < len(audio) / speech.SAMPLE_RATE < 6.0  # a short sentence lasts seconds
    assert rms(mulaw_decode(audio)) > 500  # speech, not silence
    assert speech.synthesise(text) is audio  # cached
    speech.synthesise.cache_clear()
    assert speech.synthesise(text) == audio  # no dither: the same bytes again


@needs_espeak
@needs_sox
def test_without_sox_our_encoder_gives_the_same_speech_as_sox(monkeypatch):
    text = "thank you, goodbye"
    with_sox = speech.synthesise(text)
    monkeypatch.setattr(shutil, "which", hiding("sox"))
    ours = speech._espeak(text)
    assert len(ours) == pytest.approx(len(with_sox), abs=8)
    reference, mine = mulaw_decode(with_sox), mulaw_decode(ours)
    assert rms(mine) == pytest.approx(rms(reference), rel=0.1)
    # Sample by sample the two agree closely (same speech, two resamplers), far above chance.
    n = min(len(mine), len(reference))
    dot = sum(a * b for a, b in zip(mine[:n], reference[:n], strict=True))
    assert dot / (rms(mine[:n]) * rms(reference[:n]) * n) > 0.9


def test_without_espeak_the_shipped_recordings_still_speak(monkeypatch):
    monkeypatch.setattr(shutil, "which", hiding("espeak-ng"))
    assert not speech.speech_available()
    assert speech.missing_programs() == ("espeak-ng",)
    assert speech.speakable() == SHIPPED
    for sentence in SHIPPED:
        audio = speech.synthesise(sentence.text)
        assert 1.0 < len(audio) / speech.SAMPLE_RATE < 6.0
        assert rms(mulaw_decode(audio)) > 500


def test_without_espeak_another_text_is_refused_naming_the_program_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", hiding("espeak-ng"))
    unshipped = next(sentence for sentence in SENTENCES if sentence not in SHIPPED)
    with pytest.raises(
        SpeechUnavailable, match=r"espeak-ng is not installed .*apt-get install espeak-ng sox"
    ):
        speech.synthesise(unshipped.text)


def test_the_manifest_names_every_shipped_sentence_with_its_label():
    shipped = speech._shipped_recordings()
    assert set(shipped) == {sentence.text for sentence in SHIPPED}
