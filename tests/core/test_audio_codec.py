"""The codec (core/audio.py): G.711 against CPython's reference, formats, resampling, cuts, WAV."""

from __future__ import annotations

import io
import warnings
import wave
from typing import Any

import numpy as np
import pytest

from core.audio import (
    AudioFormat,
    UnsupportedAudio,
    decode,
    from_media_format,
    mulaw_encode,
    parse_format,
    quietest_cut,
    resample,
    wav_header,
)

MULAW_8K = AudioFormat("mulaw", 8000)


def reference_audioop() -> Any:
    """CPython's C implementation of G.711 (deprecated, gone in 3.13): the reference, if here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("audioop")


def test_mulaw_and_alaw_decode_every_code_as_the_reference_does():
    audioop = reference_audioop()
    codes = bytes(range(256))

    mulaw = decode(codes, MULAW_8K)
    alaw = decode(codes, AudioFormat("alaw", 8000))

    assert mulaw.tolist() == list(np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16))
    assert alaw.tolist() == list(np.frombuffer(audioop.alaw2lin(codes, 2), dtype=np.int16))


def test_mulaw_encode_gives_back_every_code_and_keeps_the_order_of_samples():
    codes = bytes(c for c in range(256) if c != 0x7F)  # 0x7F is "-0": it comes back as 0xFF
    samples = np.arange(-32768, 32768, 7, dtype=np.int16)

    assert mulaw_encode(decode(codes, MULAW_8K)) == codes
    levels = decode(mulaw_encode(samples), MULAW_8K)
    assert np.all(np.diff(levels.astype(int)) >= 0)


def test_mulaw_round_trip_keeps_speech_within_its_quantisation():
    tone = (8000 * np.sin(np.arange(800) * 2 * np.pi * 440 / 8000)).astype(np.int16)

    back = decode(mulaw_encode(tone), MULAW_8K)

    assert np.max(np.abs(back.astype(int) - tone)) <= 256  # μ-law's largest step at this level
    assert decode(bytes([0xFF]), MULAW_8K).tolist() == [0]  # μ-law's silence


def test_l16_is_big_endian_and_must_be_whole_samples():
    fmt = parse_format("audio/L16;rate=16000")

    assert decode(b"\x01\x00\xff\xff", fmt).tolist() == [256, -1]
    with pytest.raises(UnsupportedAudio, match="not whole 16-bit samples"):
        decode(b"\x01\x00\xff", fmt)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("audio/x-mulaw;rate=8000", AudioFormat("mulaw", 8000)),
        ("audio/x-mulaw", AudioFormat("mulaw", 8000)),
        ("audio/PCMU; rate=8000; channels=1", AudioFormat("mulaw", 8000)),
        ("audio/x-alaw;rate=16000", AudioFormat("alaw", 16000)),
        ("audio/L16;rate=16000", AudioFormat("l16", 16000)),
    ],
)
def test_formats_are_read_as_mime_types_with_parameters(text, expected):
    assert parse_format(text) == expected
    assert parse_format(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("audio/opus;rate=48000", "'audio/opus' is not supported"),
        ("audio/x-mulaw;rate=8000;channels=2", "only mono"),
        ("audio/x-mulaw;rate=100", "rate of 100 Hz"),
        ("audio/x-mulaw;rate=fast", "must be integers"),
    ],
)
def test_a_format_we_cannot_decode_is_refused_saying_why(text, says):
    with pytest.raises(UnsupportedAudio, match=says):
        parse_format(text)


def test_twilio_media_format_is_read_from_the_start_message():
    twilio = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}

    assert from_media_format(twilio) == MULAW_8K
    assert MULAW_8K.frame_samples() == 160  # 20 ms
    with pytest.raises(UnsupportedAudio):
        from_media_format({"encoding": "audio/x-mulaw", "sampleRate": "8000"})
    with pytest.raises(UnsupportedAudio):
        from_media_format("audio/x-mulaw")


def test_resampling_keeps_a_tone_its_pitch_and_its_loudness():
    t = np.arange(8000) / 8000
    tone = (10000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)

    up = resample(tone, 8000, 16000)

    assert len(up) == 16000
    spectrum = np.abs(np.fft.rfft(up))
    assert np.argmax(spectrum) == 440  # 1 s of audio: one bin a hertz
    assert abs(np.max(np.abs(up)) - 10000) < 100
    assert resample(tone, 8000, 8000) is tone


def test_the_cut_is_the_quietest_frame_on_a_frame_boundary():
    samples = np.full(1600, 5000, dtype=np.int16)
    samples[960:1120] = 0  # frame 6 (of 160 samples) is silent

    assert quietest_cut(samples, 500, 1600, 160) == 960
    assert quietest_cut(samples, 0, 900, 160) in range(0, 900, 160)
    assert quietest_cut(samples, 1590, 1600, 160) == 1600  # no whole frame there


def test_the_wav_header_describes_the_pcm_after_it():
    pcm = np.arange(-400, 400, dtype=np.int16).astype("<i2").tobytes()

    with wave.open(io.BytesIO(wav_header(len(pcm), 8000) + pcm)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 8000)
        assert reader.readframes(reader.getnframes()) == pcm
