"""A call's audio, assembled lazily from its packets in PostgreSQL: the AI providers' input.

The packets are read in sequence order a page at a time and decoded as they come (base64, then
the call's encoding: a media stream's `start.mediaFormat`, else PACKET_AUDIO_ENCODING), so memory
stays bounded however long the call: a page of packets and one segment of audio at most.

A missing sequence becomes silence as long as one packet, so timings stay true: a media stream's
frame (20 ms, what Twilio sends) when the call said its format, else as long as the packet before
the gap (HTTP packets: a PBX sends packets of one size, whatever it is). A run of missing packets
longer than MAX_GAP_S is a hole in the numbering, not in the conversation: it becomes MAX_GAP_S.

Data that is not base64, or not whole samples of the format, or a format we cannot decode, raises
UndecodableAudio: a permanent failure, so the call ends FAILED with the reason, never retried.
The mock provider does not decode anything: it reads the packets' data as text (`texts`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.audio import (
    AudioFormat,
    Samples,
    UnsupportedAudio,
    decode,
    from_media_format,
    parse_format,
    quietest_cut,
)
from db.call_audio import PacketFigures
from jobs.ai import PermanentAIError
from settings import Settings

PAGE_PACKETS = 2000  # 20 ms packets: 40 s of audio, 320 KB of μ-law, a page
MAX_GAP_S = 60.0
# Extra time a transcription may take per second of audio when AI_TIMEOUT_PER_AUDIO_S is unset:
# the mock ignores the audio; pocketsphinx needs about half a CPU second per second of audio
# (BENCHMARKS.md), three times that when the cores are shared; a hosted model is faster.
TIMEOUT_PER_AUDIO_S = {"mock": 0.0, "local": 1.5, "openai": 0.5}
JOB_MARGIN_S = 30.0  # left of JOB_TIMEOUT_S for the flush and the final writes


class UndecodableAudio(PermanentAIError):
    """The call's data is not audio we can decode: the call ends FAILED, never retried."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"the call's audio cannot be decoded: {problem}")


class PacketSource(Protocol):
    """The call's packets, by sequence (db/call_audio.py's CallPackets in the worker)."""

    async def page(self, after: int, limit: int) -> list[tuple[int, str]]: ...

    async def figures(self) -> PacketFigures: ...


@dataclass(frozen=True, slots=True)
class AudioFacts:
    format: AudioFormat | None  # None: undecodable, for `problem`
    problem: str | None
    frame_from_format: bool  # a media stream's frame fills gaps, else the packet before
    seconds: float  # about how long the audio is, gaps included (before reading it)


class CallAudio:
    """One call's packets for one AI step: the text the mock reads, the audio real providers get.
    Nothing is read before a provider asks, and every attempt reads afresh."""

    def __init__(
        self,
        call_id: str,
        source: PacketSource,
        default_format: str,
        kept: Sequence[str] | None = None,
        page_packets: int = PAGE_PACKETS,
    ) -> None:
        self.call_id = call_id
        self.source = source
        self.default_format = default_format
        self.kept = kept  # the packets' data when the flush kept it (small calls)
        self.page_packets = page_packets
        self._facts: AudioFacts | None = None

    async def texts(self) -> Sequence[str]:
        """The packets' data in sequence order, as sent (the mock's transcript joins them)."""
        if self.kept is not None:
            return self.kept
        return [data async for page in self._pages() for _, data in page]

    async def facts(self) -> AudioFacts:
        """The call's format and about how long it is: one query, whatever the call's length."""
        if self._facts is None:
            self._facts = _facts(await self.source.figures(), self.default_format)
        return self._facts

    async def format(self) -> AudioFormat:
        facts = await self.facts()
        if facts.format is None:
            raise UndecodableAudio(facts.problem or "unknown format")
        return facts.format

    async def pcm(self) -> AsyncIterator[Samples]:
        """The call's audio as 16-bit PCM at its format's rate, a page at a time, gaps filled."""
        facts = await self.facts()
        fmt = await self.format()
        gap_cap = int(MAX_GAP_S * fmt.rate)
        previous: tuple[int, int] | None = None  # (sequence, samples) of the last packet
        async for page in self._pages():
            parts: list[Samples] = []
            run: list[bytes] = []  # consecutive packets, decoded together
            for sequence, raw in _raw_packets(page, fmt):
                if previous is not None and sequence > previous[0] + 1:
                    frame = fmt.frame_samples() if facts.frame_from_format else previous[1]
                    silent = min((sequence - previous[0] - 1) * frame, gap_cap)
                    parts += [decode(b"".join(run), fmt), np.zeros(silent, dtype=np.int16)]
                    run = []
                run.append(raw)
                previous = (sequence, len(raw) // fmt.sample_bytes)
            parts.append(decode(b"".join(run), fmt))
            yield np.concatenate(parts)

    async def segments(self, max_s: float, search_s: float) -> AsyncIterator[Samples]:
        """The audio in pieces of at most `max_s` seconds, each cut at the quietest 20 ms frame
        of its last `search_s` seconds, so that a word is rarely cut in two."""
        fmt = await self.format()
        longest, search = int(max_s * fmt.rate), int(search_s * fmt.rate)
        frame = fmt.frame_samples()
        held: list[Samples] = []
        size = 0
        async for samples in self.pcm():
            held.append(samples)
            size += len(samples)
            while size >= longest:
                audio = np.concatenate(held)
                cut = quietest_cut(audio, longest - search, longest, frame) or longest
                yield audio[:cut]
                held, size = [audio[cut:]], len(audio) - cut
        if size:
            yield np.concatenate(held)

    async def _pages(self) -> AsyncIterator[list[tuple[int, str]]]:
        after = -1
        while True:
            page = await self.source.page(after, self.page_packets)
            if page:
                yield page
            if len(page) < self.page_packets:
                return
            after = page[-1][0]


def _raw_packets(page: list[tuple[int, str]], fmt: AudioFormat) -> Iterator[tuple[int, bytes]]:
    """Each packet's bytes, checked to be whole samples of the call's format."""
    for sequence, data in page:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise UndecodableAudio(f"packet {sequence}'s data is not base64") from None
        if len(raw) % fmt.sample_bytes:
            raise UndecodableAudio(f"packet {sequence} is not {fmt}: {len(raw)} bytes")
        yield sequence, raw


def _facts(figures: PacketFigures, default_format: str) -> AudioFacts:
    media_format = (figures.metadata or {}).get("mediaFormat")
    try:
        if media_format is not None:
            fmt: AudioFormat | None = from_media_format(media_format)
        else:
            fmt = parse_format(default_format)
        problem = None
    except UnsupportedAudio as exc:
        fmt, problem = None, str(exc)
    rate, sample_bytes = (fmt.rate, fmt.sample_bytes) if fmt else (8000, 1)
    samples = figures.data_chars * 3 // 4 // sample_bytes
    missing = 0
    if figures.first is not None and figures.last is not None:
        missing = figures.last - figures.first + 1 - figures.packets
    frame = fmt.frame_samples() if fmt and media_format is not None else 0
    if not frame and figures.packets:
        frame = samples // figures.packets
    seconds = (samples + missing * frame) / rate
    return AudioFacts(fmt, problem, media_format is not None, seconds)


def timeout_per_audio_s(settings: Settings) -> float:
    """AI_TIMEOUT_PER_AUDIO_S, or the provider's own when it is unset."""
    per_s = settings.ai_timeout_per_audio_s
    return TIMEOUT_PER_AUDIO_S[settings.ai_provider] if per_s is None else per_s


def transcription_allowance_s(settings: Settings, seconds: float) -> float:
    """Extra time a transcription attempt (and the call's AI budget) gets for `seconds` of
    audio: AI_TIMEOUT_PER_AUDIO_S a second of audio, but never so much that the job's own limit
    (JOB_TIMEOUT_S) would cut the run short before the attempts do, which would re-run the call."""
    per_s = timeout_per_audio_s(settings)
    if per_s == 0:
        return 0.0
    room = settings.job_timeout_s - settings.ai_call_budget_s - JOB_MARGIN_S
    return max(0.0, min(per_s * seconds, room))


async def allowance_for(settings: Settings, audio: CallAudio) -> float:
    """transcription_allowance_s for this call; no query at all when nothing is allowed (mock)."""
    if timeout_per_audio_s(settings) == 0:
        return 0.0
    return transcription_allowance_s(settings, (await audio.facts()).seconds)
