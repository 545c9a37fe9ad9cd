"""Telephone audio as numbers: the formats a PBX sends (G.711 μ-law and A-law, 16-bit linear),
decoded to 16-bit PCM, resampled, cut at quiet points (the one chunker, `quiet_pieces`, and a
live window's end, `pause_cut`), and wrapped as WAV. Pure functions over numpy arrays, no I/O:
the worker (jobs/audio.py), the providers, the benchmark and the tests share this one codec.

Formats are named as MIME types with parameters, as Twilio and RTP name them:
`audio/x-mulaw;rate=8000`, `audio/x-alaw;rate=8000`, `audio/L16;rate=16000` (big-endian, RFC 2586).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]
Codec = Literal["mulaw", "alaw", "l16"]

FRAME_MS = 20  # one RTP / Twilio media frame
_CODECS: dict[str, Codec] = {
    "audio/x-mulaw": "mulaw",
    "audio/mulaw": "mulaw",
    "audio/pcmu": "mulaw",
    "audio/basic": "mulaw",
    "audio/x-alaw": "alaw",
    "audio/alaw": "alaw",
    "audio/pcma": "alaw",
    "audio/l16": "l16",
}
_MIME: dict[Codec, str] = {"mulaw": "audio/x-mulaw", "alaw": "audio/x-alaw", "l16": "audio/L16"}
RATES = range(8000, 48001)  # telephony's 8 kHz up to studio 48 kHz


class UnsupportedAudio(ValueError):
    """A format this codec cannot decode, or data that is not in the format it claims."""


@dataclass(frozen=True, slots=True)
class AudioFormat:
    codec: Codec
    rate: int  # samples a second
    channels: int = 1

    @property
    def sample_bytes(self) -> int:
        return 2 if self.codec == "l16" else 1

    def frame_samples(self, ms: int = FRAME_MS) -> int:
        return self.rate * ms // 1000

    def __str__(self) -> str:
        return f"{_MIME[self.codec]};rate={self.rate}"


# G.711 μ-law at 8 kHz, 20 ms frames: Twilio's media streams, most PBXs, and what the simulator
# and the benchmarks speak.
TELEPHONY = AudioFormat("mulaw", 8000)


def parse_format(text: str) -> AudioFormat:
    """`audio/x-mulaw;rate=8000` (rate defaults to 8000; channels, if given, must be 1)."""
    mime, *params = (part.strip() for part in text.split(";"))
    values: dict[str, str] = {}
    for param in params:
        name, _, value = param.partition("=")
        values[name.strip().lower()] = value.strip()
    try:
        rate = int(values.get("rate", "8000"))
        channels = int(values.get("channels", "1"))
    except ValueError:
        raise UnsupportedAudio(f"{text!r}: rate and channels must be integers") from None
    return _format(mime, rate, channels, text)


def from_media_format(media_format: Any) -> AudioFormat:
    """Twilio's `start.mediaFormat`: {"encoding": "audio/x-mulaw", "sampleRate": 8000, ...}."""
    if not isinstance(media_format, dict):
        raise UnsupportedAudio("mediaFormat is not an object")
    encoding, rate = media_format.get("encoding"), media_format.get("sampleRate", 8000)
    channels = media_format.get("channels", 1)
    if not isinstance(encoding, str) or not isinstance(rate, int) or not isinstance(channels, int):
        raise UnsupportedAudio(f"mediaFormat {media_format!r} is not encoding/sampleRate/channels")
    return _format(encoding, rate, channels, str(media_format))


def _format(mime: str, rate: int, channels: int, said: str) -> AudioFormat:
    codec = _CODECS.get(mime.lower())
    if codec is None:
        known = ", ".join(sorted(set(_MIME.values())))
        raise UnsupportedAudio(f"audio encoding {mime!r} is not supported (only {known})")
    if rate not in RATES:
        raise UnsupportedAudio(f"{said!r}: a rate of {rate} Hz is not supported (8000-48000)")
    if channels != 1:
        raise UnsupportedAudio(f"{said!r}: {channels} channels; only mono audio is supported")
    return AudioFormat(codec, rate, channels)


def _mulaw_table() -> Samples:
    """G.711 μ-law: 8-bit codes (bits inverted) to 16-bit linear samples."""
    code = ~np.arange(256, dtype=np.uint8)
    exponent = (code >> 4) & 0x07
    magnitude = (((code & 0x0F).astype(np.int32) << 3) + 0x84) << exponent
    return np.where(code & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def _alaw_table() -> Samples:
    """G.711 A-law: 8-bit codes (even bits inverted) to 16-bit linear samples."""
    code = np.arange(256, dtype=np.uint8) ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = (code & 0x0F).astype(np.int32)
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1)
    )
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


_MULAW = _mulaw_table()
_ALAW = _alaw_table()
MULAW_SILENCE = 0xFF  # the μ-law code of a zero sample


def decode(data: bytes, fmt: AudioFormat) -> Samples:
    """Encoded bytes to 16-bit linear PCM samples (native int16)."""
    if fmt.codec == "l16":
        if len(data) % 2:
            raise UnsupportedAudio(f"{len(data)} bytes are not whole 16-bit samples")
        return np.frombuffer(data, dtype=">i2").astype(np.int16)
    table = _MULAW if fmt.codec == "mulaw" else _ALAW
    return table[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(samples: Samples) -> bytes:
    """16-bit linear PCM to G.711 μ-law (what a PBX sends; the tests and benchmark use it)."""
    x = samples.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.maximum(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    codes = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)
    return bytes(codes.tobytes())


def resample(samples: Samples, rate_in: int, rate_out: int) -> Samples:
    """Band-limited resampling through the spectrum (exact for any ratio; the signal is taken as
    periodic, so cut it at quiet points: jobs/audio.py segments calls at the quietest frames)."""
    if rate_in == rate_out or len(samples) == 0:
        return samples
    n_in = len(samples)
    n_out = max(1, round(n_in * rate_out / rate_in))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    kept = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    shared = min(len(spectrum), len(kept))
    kept[:shared] = spectrum[:shared]
    out = np.fft.irfft(kept, n_out) * (n_out / n_in)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def quietest_cut(samples: Samples, start: int, end: int, frame: int) -> int:
    """The start of the quietest whole frame in samples[start:end] (frames counted from 0, so a
    cut there is a frame boundary): where a long recording can be split without cutting a word."""
    first = -(-start // frame) * frame
    count = (min(end, len(samples)) - first) // frame
    if count <= 0:
        return min(end, len(samples))
    window = samples[first : first + count * frame].astype(np.float64).reshape(count, frame)
    return first + int(np.argmin((window * window).sum(axis=1))) * frame


async def quiet_pieces(
    blocks: AsyncIterable[Samples], fmt: AudioFormat, max_s: float, search_s: float
) -> AsyncIterator[Samples]:
    """The audio of `blocks`, in pieces of at most `max_s` seconds, each cut at the quietest
    20 ms frame of its last `search_s` seconds, so that a word is rarely cut in two: how every
    provider that hears audio a piece at a time gets it."""
    longest, search = int(max_s * fmt.rate), int(search_s * fmt.rate)
    frame = fmt.frame_samples()
    held: list[Samples] = []
    size = 0
    async for samples in blocks:
        held.append(samples)
        size += len(samples)
        while size >= longest:
            audio = np.concatenate(held)
            cut = quietest_cut(audio, longest - search, longest, frame) or longest
            yield audio[:cut]
            held, size = [audio[cut:]], len(audio) - cut
    if size:
        yield np.concatenate(held)


# A pause: PAUSE_FRAMES 20 ms frames in a row, each at most PAUSE_SHARE of the stretch's median
# loudness (or under NOISE_FLOOR_RMS, a quiet line's hiss). Speech pauses every few seconds.
PAUSE_FRAMES = 5
PAUSE_SHARE = 0.1
NOISE_FLOOR_RMS = 60.0


def pause_cut(samples: Samples, frame: int) -> int | None:
    """Where to end a live window in `samples` (the end of what is stored): in the middle of
    the last pause (a breath between words or sentences), or None if there is none."""
    count = len(samples) // frame
    if count < PAUSE_FRAMES:
        return None
    frames = samples[: count * frame].astype(np.float64).reshape(count, frame)
    rms = np.sqrt((frames * frames).mean(axis=1))
    quiet = rms <= max(NOISE_FLOOR_RMS, PAUSE_SHARE * float(np.median(rms)))
    # The last run of PAUSE_FRAMES quiet frames: its frames are all quiet.
    runs = np.convolve(quiet.astype(np.int64), np.ones(PAUSE_FRAMES, dtype=np.int64), "valid")
    ends = np.flatnonzero(runs == PAUSE_FRAMES)
    if not len(ends):
        return None
    last = int(ends[-1])  # the first frame of the last quiet run
    return (last + PAUSE_FRAMES // 2) * frame


WAV_HEADER_BYTES = 44
RF64_HEADER_BYTES = 80  # RIFF's 44 and a ds64 chunk of 36
_RIFF_MAX = 0xFFFFFFFF  # RIFF's sizes are 32-bit


def wav_header(data_bytes: int, rate: int, channels: int = 1, sample_bytes: int = 2) -> bytes:
    """The header of a PCM WAV file holding `data_bytes` of little-endian samples: 44 bytes of
    RIFF, or, past RIFF's 4 GiB, 80 bytes of RF64 (EBU Tech 3306: the sizes move to a ds64
    chunk as 64-bit numbers, and the 32-bit ones say 0xFFFFFFFF)."""
    block = channels * sample_bytes
    fmt = struct.pack(
        "<4sIHHIIHH", b"fmt ", 16, 1, channels, rate, rate * block, block, sample_bytes * 8
    )  # 1: PCM
    if 36 + data_bytes <= _RIFF_MAX:
        return (
            struct.pack("<4sI4s", b"RIFF", 36 + data_bytes, b"WAVE")
            + fmt
            + struct.pack("<4sI", b"data", data_bytes)
        )
    ds64 = struct.pack("<4sIQQQI", b"ds64", 28, 72 + data_bytes, data_bytes, data_bytes // block, 0)
    return (
        struct.pack("<4sI4s", b"RF64", _RIFF_MAX, b"WAVE")
        + ds64
        + fmt
        + struct.pack("<4sI", b"data", _RIFF_MAX)
    )
