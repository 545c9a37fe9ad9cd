"""A feed's raw audio as 20 ms packets, one timeline per track (invariant 18).

A PBX sends a track's audio as bytes in frames of any size (any whole number of samples), one
track per socket or two interleaved. Each track's bytes are cut into 20 ms frames: sequence = the
frame's index on the track (0, 1, 2, ...), timestamp = the feed's origin + index * 20 ms, so two
tracks of one feed line up exactly, and two sockets of one call line up by when each began. A
pause (AudioHook's `paused`, `discarded`) moves the timeline on without packets: the recording
puts silence there, as for any gap. What is left at the end (less than 20 ms) is one short last
packet. Pure logic, no I/O.

Stored formats: G.711 μ-law and A-law as sent; signed linear (little-endian, as Asterisk and
FreeSWITCH send it) as `audio/L16` (big-endian, RFC 2586: core/audio.py's one codec), so each
stored sample is exactly what was sent.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from core.audio import FRAME_MS, AudioFormat, UnsupportedAudio, parse_format
from db.packets import NewPacket, Track

Codec = Literal["mulaw", "alaw", "slin"]  # slin: signed 16-bit little-endian linear PCM
_STORED_MIME = {"mulaw": "audio/x-mulaw", "alaw": "audio/x-alaw", "slin": "audio/L16"}
_SILENCE = {"mulaw": b"\xff", "alaw": b"\xd5", "slin": b"\x00\x00"}  # one sample of silence
FRAME_S = FRAME_MS / 1000


@dataclass(frozen=True, slots=True)
class FeedFormat:
    """What a feed's bytes are: codec, rate and channels (interleaved sample by sample)."""

    codec: Codec
    rate: int
    channels: int = 1

    def __post_init__(self) -> None:
        if self.channels not in (1, 2):
            raise UnsupportedAudio(f"{self.channels} channels; a feed carries 1 or 2")
        if self.codec != "slin" and self.rate != 8000:
            raise UnsupportedAudio(f"G.711 ({self.codec}) is 8000 Hz, not {self.rate}")
        self.stored()  # raises UnsupportedAudio for a rate core/audio.py cannot store

    @property
    def sample_bytes(self) -> int:
        return 2 if self.codec == "slin" else 1

    def stored(self) -> AudioFormat:
        """Each track's format as stored (core/audio.py's)."""
        return parse_format(f"{_STORED_MIME[self.codec]};rate={self.rate}")

    def media_format(self) -> dict[str, object]:
        """The call's `mediaFormat`, as a Twilio start carries it: the worker decodes by it."""
        return {"encoding": _STORED_MIME[self.codec], "sampleRate": self.rate, "channels": 1}

    @property
    def frame_bytes(self) -> int:
        """One track's 20 ms frame, in bytes."""
        return self.rate * FRAME_MS // 1000 * self.sample_bytes


@dataclass(slots=True)
class _Track:
    next_index: int = 0
    pending: bytearray = field(default_factory=bytearray)


class Timeline:
    """The tracks of one feed: raw bytes in, 20 ms packets out."""

    def __init__(self, fmt: FeedFormat, origin: float) -> None:
        self.fmt = fmt
        self.origin = origin  # epoch seconds of the timeline's position 0
        self._tracks: dict[Track, _Track] = {}

    def add(self, track: Track, data: bytes) -> list[NewPacket]:
        """One track's bytes (the feed's codec, mono): the whole frames they complete."""
        if len(data) % self.fmt.sample_bytes:
            raise UnsupportedAudio(f"{len(data)} bytes are not whole {self.fmt.codec} samples")
        state = self._tracks.setdefault(track, _Track())
        state.pending += data
        return self._cut(track, state)

    def add_interleaved(self, data: bytes, tracks: tuple[Track, Track]) -> list[NewPacket]:
        """Two channels interleaved sample by sample: channel 0 to tracks[0], 1 to tracks[1]."""
        width = self.fmt.sample_bytes
        if len(data) % (2 * width):
            raise UnsupportedAudio(f"{len(data)} bytes are not whole stereo samples")
        pairs = np.frombuffer(data, dtype=np.uint8).reshape(-1, 2, width)
        packets = self.add(tracks[0], pairs[:, 0, :].tobytes())
        return packets + self.add(tracks[1], pairs[:, 1, :].tobytes())

    def position_s(self, track: Track) -> float:
        """How far the track has got (its stored frames and the part of one pending)."""
        state = self._tracks.get(track, _Track())
        samples = len(state.pending) // self.fmt.sample_bytes
        return state.next_index * FRAME_S + samples / self.fmt.rate

    def skip_to(self, track: Track, position_s: float) -> list[NewPacket]:
        """Move the track on to `position_s` without audio (a pause): a pending part frame is
        completed with silence and stored, then the frames up to there are left out (the
        recording's silence). A position behind the track's changes nothing."""
        state = self._tracks.setdefault(track, _Track())
        packets: list[NewPacket] = []
        if state.pending and position_s > self.position_s(track):
            missing = self.fmt.frame_bytes - len(state.pending)
            state.pending += _SILENCE[self.fmt.codec] * (missing // self.fmt.sample_bytes)
            packets = self._cut(track, state)
        state.next_index = max(state.next_index, int(round(position_s / FRAME_S, 6)))
        return packets

    def finish(self) -> list[NewPacket]:
        """The end: each track's last part frame, as a short packet."""
        packets = []
        for track, state in self._tracks.items():
            if state.pending:
                packets.append(self._packet(track, state, bytes(state.pending)))
                state.pending.clear()
        return packets

    def _cut(self, track: Track, state: _Track) -> list[NewPacket]:
        size = self.fmt.frame_bytes
        whole = len(state.pending) // size * size
        if not whole:
            return []
        chunk, state.pending = bytes(state.pending[:whole]), state.pending[whole:]
        return [self._packet(track, state, chunk[i : i + size]) for i in range(0, whole, size)]

    def _packet(self, track: Track, state: _Track, frame: bytes) -> NewPacket:
        if self.fmt.codec == "slin":  # little-endian as sent; L16 is big-endian
            frame = np.frombuffer(frame, dtype="<i2").astype(">i2").tobytes()
        index = state.next_index
        state.next_index += 1
        payload = base64.b64encode(frame).decode()
        return NewPacket(index, self.origin + index * FRAME_S, payload, track)
