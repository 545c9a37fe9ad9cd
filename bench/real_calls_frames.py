"""The real-calls benchmark's calls, without a stack: a two-party dialogue of real speech as 8 kHz
μ-law in 20 ms frames, and the Twilio `both_tracks` messages that carry it.

The caller (inbound) and the agent (outbound) take turns: while one speaks the other track carries
silence, as a PBX sends both tracks all along. Messages follow Twilio's numbering: `start` is
sequenceNumber 1, the media messages count on from 2 across both tracks (inbound then outbound
in each 20 ms tick), `media.chunk` counts each track's frames from 1 and `media.timestamp` its
milliseconds from 0.
"""

from __future__ import annotations

from base64 import b64decode, b64encode
from dataclasses import dataclass

import orjson

from simulate import speech

FRAME_BYTES = speech.FRAME_MS * speech.BYTES_PER_MS  # 160: 20 ms of 8 kHz μ-law
FRAMES_PER_S = 1000 // speech.FRAME_MS  # 50 a track
TRACKS = ("inbound", "outbound")
PAUSE_MS = 300  # between two turns of the dialogue
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}


@dataclass(frozen=True)
class Dialogue:
    """One loop of the conversation: both tracks' frames, tick by tick, as base64 payloads."""

    inbound: tuple[str, ...]
    outbound: tuple[str, ...]
    source: str  # "espeak-ng" or "shipped recordings"

    def __len__(self) -> int:
        return len(self.inbound)

    def frame(self, track: int, tick: int) -> str:
        frames = self.inbound if track == 0 else self.outbound
        return frames[tick % len(frames)]


def dialogue_of(turns: list[bytes], source: str) -> Dialogue:
    """The turns (μ-law audio) spoken alternately, caller first; each turn's silence on the other
    track has the same length, so both tracks have the same number of frames."""
    tracks: tuple[bytearray, bytearray] = (bytearray(), bytearray())
    pause = speech.silence(PAUSE_MS)
    for i, audio in enumerate(turns):
        quiet = speech.silence(len(audio) // speech.BYTES_PER_MS)[: len(audio)]
        tracks[i % 2].extend(audio + pause)
        tracks[1 - i % 2].extend(quiet + pause)
    payloads = [
        tuple(b64encode(frame).decode() for frame in speech.frames(bytes(track)))
        for track in tracks
    ]
    return Dialogue(payloads[0], payloads[1], source)


def real_dialogue() -> Dialogue:
    """Every sentence this machine can speak (espeak-ng, else the shipped recordings)."""
    sentences = speech.speakable()
    source = "espeak-ng" if speech.speech_available() else "shipped recordings"
    return dialogue_of([speech.synthesise(s.text) for s in sentences], source)


@dataclass(frozen=True)
class TwoTrackCall:
    """The messages of one call of `ticks` 20 ms ticks (two media messages a tick)."""

    call_id: str
    ticks: int
    dialogue: Dialogue

    @property
    def stream_sid(self) -> str:
        return f"MZ{self.call_id}"

    def start(self) -> str:
        start = {
            "callSid": self.call_id,
            "streamSid": self.stream_sid,
            "tracks": list(TRACKS),
            "mediaFormat": MEDIA_FORMAT,
            "customParameters": {},
        }
        frame = {"event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid}
        return orjson.dumps({**frame, "start": start}).decode()

    def media(self, tick: int) -> tuple[str, str]:
        """Tick `tick`'s two messages: inbound, then outbound."""
        return self._media(tick, 0), self._media(tick, 1)

    def _media(self, tick: int, track: int) -> str:
        # Formatted, not orjson.dumps'd: the client sends up to ~10,000 of these a second
        # on the cores it shares with the stack. Every value is a plain ASCII string.
        return (
            f'{{"event":"media","sequenceNumber":"{2 + 2 * tick + track}",'
            f'"streamSid":"{self.stream_sid}","media":{{"track":"{TRACKS[track]}",'
            f'"chunk":"{tick + 1}","timestamp":"{tick * speech.FRAME_MS}",'
            f'"payload":"{self.dialogue.frame(track, tick)}"}}}}'
        )

    def stop(self) -> str:
        sequence = str(2 + 2 * self.ticks)
        stop = {"accountSid": "", "callSid": self.call_id}
        frame = {"event": "stop", "sequenceNumber": sequence, "streamSid": self.stream_sid}
        return orjson.dumps({**frame, "stop": stop}).decode()

    def track_audio(self, track: int) -> bytes:
        """What one track sent, as μ-law: what its channel of the recording must hold."""
        frames = self.dialogue.inbound if track == 0 else self.dialogue.outbound
        loops, rest = divmod(self.ticks, len(frames))
        one = b"".join(b64decode(f) for f in frames)
        return one * loops + one[: rest * FRAME_BYTES]


def ticks_of(seconds: float) -> int:
    return max(1, round(seconds * FRAMES_PER_S))
