"""A call's recording: how its packets become stored segments, and how the segments are read back
as 16-bit PCM per track, mono or stereo, and as a WAV file with byte ranges.

Storing (`build_rows`): each track's packets of a segment, in sequence order, become one row.
When every packet is canonical base64 of whole samples of the call's audio format, the row holds
the decoded bytes (3/4 of the base64, and nothing else a packet); otherwise it holds the data as
sent (the mock's callers send text) and is decoded, if ever, when read. Over HTTP, where the
format is only PACKET_AUDIO_ENCODING's claim, a packet must also be at least MIN_AUDIO_MS long to
count as audio: a word such as "test" is valid base64 of three bytes, and must stay a word.

Reading (`Recording`): a track's packets from all its segments, merged by sequence (a late packet
lands in a later segment and is put back in its place), with silence for the missing ones: as
long as the packet before the gap, at most MAX_GAP_S (a hole in the numbering is not a silence
in the conversation). Consecutive packets of one row are one piece; only the heads (arrays of
sequences and sizes) are held, and the bytes of a few rows at a time, so memory stays bounded by
the segment size and the call's packet count, never by its audio. Two tracks are aligned by their
first packets' timestamps (Twilio's media.timestamp counts per track from the stream's start):
channel 0 (left) is inbound, the caller; channel 1 (right) is outbound, the agent.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from core.audio import (
    AudioFormat,
    Samples,
    UnsupportedAudio,
    decode,
    from_media_format,
    parse_format,
    wav_header,
)
from db.packets import StoredPacket
from db.segments import TEXT, SegmentHead, SegmentRow

MIN_AUDIO_MS = 10
MAX_GAP_S = 60.0
MAX_ALIGN_S = 60.0  # the most one track may start after the other
BLOCK_S = 1.0  # a WAV's PCM is produced a second at a time
MIX_BLOCK_S = 40.0  # what a transcription reads at once: 40 s, 640 KB of 16-bit PCM at 8 kHz
PAYLOAD_CACHE = 4  # rows whose bytes are held at once

Ints = npt.NDArray[np.int64]


class NotAudio(ValueError):
    """The call's packets are not audio in its format: says which packet, and why."""


def call_format(metadata: dict[str, Any] | None, default_format: str) -> tuple[AudioFormat, bool]:
    """The call's audio format and whether the call said it (a media stream's mediaFormat) or
    it is PACKET_AUDIO_ENCODING's claim; raises UnsupportedAudio for one we cannot decode."""
    media_format = (metadata or {}).get("mediaFormat")
    if media_format is not None:
        return from_media_format(media_format), True
    return parse_format(default_format), False


def _audio_of(data: str, fmt: AudioFormat, min_bytes: int) -> bytes | None:
    """The packet's bytes if its data is canonical base64 (it encodes back to itself, so the
    text can be given back exactly) of whole samples, at least `min_bytes` long."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    if (
        len(raw) < min_bytes
        or len(raw) % fmt.sample_bytes
        or base64.b64encode(raw) != data.encode()
    ):
        return None
    return raw


def build_rows(
    packets: Sequence[StoredPacket], fmt: AudioFormat | None, said: bool
) -> list[SegmentRow]:
    """A segment's rows, one per track, from its packets (any order). `said`: the call gave its
    format (a media stream), so any whole samples are audio."""
    rows = []
    for track in sorted({p.track for p in packets}):
        group = sorted((p for p in packets if p.track == track), key=lambda p: p.sequence)
        encoding, parts = TEXT, [p.data.encode() for p in group]
        if fmt is not None:
            min_bytes = 1 if said else fmt.rate * MIN_AUDIO_MS // 1000 * fmt.sample_bytes
            decoded = [_audio_of(p.data, fmt, min_bytes) for p in group]
            if all(raw is not None for raw in decoded):
                encoding, parts = str(fmt), [raw for raw in decoded if raw is not None]
        rows.append(
            SegmentRow(
                track=track,
                encoding=encoding,
                sequences=[p.sequence for p in group],
                sizes=[len(part) for part in parts],
                timestamps=[p.timestamp for p in group],
                arrivals=[p.received_at for p in group],
                payload=b"".join(parts),
            )
        )
    return rows


class SegmentSource(Protocol):
    """A call's stored segments (db/segments.py's SegmentReader)."""

    async def heads(self) -> list[SegmentHead]: ...

    async def payload(self, segment: int, track: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class TrackLine:
    """One track's timeline: its audio pieces (runs of consecutive packets of one row); what
    lies between them is silence."""

    track: int
    offset: int  # samples of silence before its first packet (aligning two tracks)
    starts: Ints  # each piece's first sample, from the track's start
    lengths: Ints  # samples
    rows: Ints  # the row (index into Recording.heads) holding the piece
    at: Ints  # the piece's first byte in that row
    samples: int  # the track's length, gaps included


def _decoded_text(head: SegmentHead, payload: bytes, fmt: AudioFormat) -> tuple[bytes, list[int]]:
    """A text row read as audio: each packet's data base64 of whole samples, or NotAudio."""
    out, sizes, at = [], [], 0
    for sequence, size in zip(head.sequences, head.sizes, strict=True):
        data = payload[at : at + size]
        at += size
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise NotAudio(f"packet {sequence}'s data is not base64") from None
        if len(raw) % fmt.sample_bytes:
            raise NotAudio(f"packet {sequence} is not {fmt}: {len(raw)} bytes")
        out.append(raw)
        sizes.append(len(raw))
    return b"".join(out), sizes


class Recording:
    """A call's recording, read lazily from its segments."""

    def __init__(
        self,
        source: SegmentSource,
        fmt: AudioFormat,
        heads: list[SegmentHead],
        lines: list[TrackLine],
        decoded: dict[int, bytes],
    ) -> None:
        self.source = source
        self.format = fmt
        self.heads = heads
        self.lines = lines
        self.channels = max(1, len(lines))
        self.samples = max((line.offset + line.samples for line in lines), default=0)
        self._decoded = decoded  # text rows already read (and decoded) while loading
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    @classmethod
    async def load(cls, source: SegmentSource, fmt: AudioFormat) -> Recording:
        """The timeline from the heads (and the bytes of text rows, which must be decoded to be
        measured); raises NotAudio when a packet is not audio in `fmt`."""
        heads = await source.heads()
        decoded: dict[int, bytes] = {}
        sizes: list[list[int]] = []
        for i, head in enumerate(heads):
            if head.encoding == TEXT:
                raw, head_sizes = _decoded_text(
                    head, await source.payload(head.segment, head.track), fmt
                )
                decoded[i] = raw
                sizes.append(head_sizes)
            elif head.encoding != str(fmt):
                raise NotAudio(f"segment {head.segment} is {head.encoding}, not {fmt}")
            else:
                sizes.append(head.sizes)
        tracks = sorted({h.track for h in heads})
        firsts = {t: _first_timestamp(heads, t) for t in tracks}
        origin = min(firsts.values(), default=0.0)
        lines = []
        for track in tracks:
            offset = 0
            if len(tracks) > 1:
                offset = round(min(max(firsts[track] - origin, 0.0), MAX_ALIGN_S) * fmt.rate)
            lines.append(_track_line(heads, sizes, track, offset, fmt))
        return cls(source, fmt, heads, lines, decoded)

    @property
    def seconds(self) -> float:
        return self.samples / self.format.rate

    async def frames(self, start: int, end: int) -> Samples:
        """Samples [start, end) of every channel, interleaved (shape: samples x channels)."""
        end = min(end, self.samples)
        out = np.zeros((max(end - start, 0), self.channels), dtype=np.int16)
        for channel, line in enumerate(self.lines):
            await self._fill(line, start, end, out[:, channel])
        return out

    async def track(self, channel: int, start: int, end: int) -> Samples:
        """Samples [start, end) of one track on its own timeline (its offset left out)."""
        line = self.lines[channel]
        end = min(end, line.samples)
        out = np.zeros(max(end - start, 0), dtype=np.int16)
        await self._fill(line, start + line.offset, end + line.offset, out)
        return out

    async def mono(self, start: int, end: int) -> Samples:
        """Samples [start, end), the tracks mixed: what a transcription of the whole call hears."""
        frames = await self.frames(start, end)
        if self.channels == 1:
            mono: Samples = frames[:, 0].copy()
            return mono
        mixed = frames.astype(np.int32).sum(axis=1)
        clipped: Samples = np.clip(mixed, -32768, 32767).astype(np.int16)
        return clipped

    async def blocks(self, mono: bool = True) -> AsyncIterator[Samples]:
        """The whole recording a block at a time."""
        block = int(MIX_BLOCK_S * self.format.rate)
        for start in range(0, self.samples, block):
            end = start + block
            yield await (self.mono(start, end) if mono else self.frames(start, end))

    # The recording as a WAV file: 16-bit PCM at the call's rate, one channel per track.
    @property
    def frame_bytes(self) -> int:
        return 2 * self.channels

    @property
    def wav_size(self) -> int:
        return len(self.wav_header()) + self.samples * self.frame_bytes

    def wav_header(self) -> bytes:
        return wav_header(self.samples * self.frame_bytes, self.format.rate, self.channels)

    async def wav_bytes(self, first: int, last: int) -> AsyncIterator[bytes]:
        """Bytes [first, last] (inclusive, as a Range says) of the WAV file, a block at a time."""
        header = self.wav_header()
        if first < len(header):
            yield header[first : last + 1]
        data_first = max(first - len(header), 0)
        data_last = last - len(header)
        if data_last < data_first:
            return
        block = int(BLOCK_S * self.format.rate)
        frame = self.frame_bytes
        start = data_first // frame
        while start * frame <= data_last:
            end = start + block
            raw = (await self.frames(start, end)).astype("<i2").tobytes()
            base = start * frame
            yield raw[max(data_first - base, 0) : data_last - base + 1]
            start = end

    async def _fill(self, line: TrackLine, start: int, end: int, out: Samples) -> None:
        sample_bytes = self.format.sample_bytes
        begins = line.starts + line.offset
        i = max(int(np.searchsorted(begins, start, side="right")) - 1, 0)
        while i < len(begins) and begins[i] < end:
            a, b = max(start, int(begins[i])), min(end, int(begins[i] + line.lengths[i]))
            if b > a:
                payload = await self._payload(int(line.rows[i]))
                at = int(line.at[i]) + (a - int(begins[i])) * sample_bytes
                out[a - start : b - start] = decode(
                    payload[at : at + (b - a) * sample_bytes], self.format
                )
            i += 1

    async def _payload(self, row: int) -> bytes:
        if row in self._decoded:
            return self._decoded[row]
        if row in self._cache:
            self._cache.move_to_end(row)
            return self._cache[row]
        head = self.heads[row]
        payload = await self.source.payload(head.segment, head.track)
        self._cache[row] = payload
        if len(self._cache) > PAYLOAD_CACHE:
            self._cache.popitem(last=False)
        return payload


class SegmentsInMemory:
    """Segments held in memory, as db/segments.py's SegmentReader serves stored ones: for a
    recording that never was in PostgreSQL (the benchmarks, the codec's tests)."""

    def __init__(self, rows: Sequence[Sequence[SegmentRow]]) -> None:
        self.rows = {(n, row.track): row for n, seg in enumerate(rows) for row in seg}

    @classmethod
    def of_packets(
        cls, segments: Sequence[Sequence[StoredPacket]], fmt: AudioFormat | None, said: bool
    ) -> SegmentsInMemory:
        """Each list of packets a segment, built as the worker builds them."""
        return cls([build_rows(packets, fmt, said) for packets in segments])

    async def heads(self) -> list[SegmentHead]:
        return [
            SegmentHead(n, track, r.encoding, r.sequences, r.sizes, r.timestamps)
            for (n, track), r in sorted(self.rows.items())
        ]

    async def payload(self, segment: int, track: int) -> bytes:
        row = self.rows.get((segment, track))
        return row.payload if row is not None else b""


def _first_timestamp(heads: list[SegmentHead], track: int) -> float:
    """The timestamp of the track's lowest sequence."""
    best: tuple[int, float] | None = None
    for head in heads:
        if head.track == track and head.sequences:
            candidate = (head.sequences[0], head.timestamps[0])
            best = candidate if best is None or candidate < best else best
    return best[1] if best is not None else 0.0


def _track_line(
    heads: list[SegmentHead], sizes: list[list[int]], track: int, offset: int, fmt: AudioFormat
) -> TrackLine:
    """The track's packets from every row, in sequence order, as pieces on its timeline."""
    mine = [i for i, h in enumerate(heads) if h.track == track]
    seqs = np.concatenate([np.asarray(heads[i].sequences, dtype=np.int64) for i in mine])
    size = np.concatenate([np.asarray(sizes[i], dtype=np.int64) for i in mine])
    row = np.concatenate([np.full(len(sizes[i]), i, dtype=np.int64) for i in mine])
    at = np.concatenate(
        [np.concatenate(([0], np.cumsum(sizes[i][:-1], dtype=np.int64))) for i in mine]
    ).astype(np.int64)
    order = np.argsort(seqs, kind="stable")
    seqs, size, row, at = seqs[order], size[order], row[order], at[order]
    samples = size // fmt.sample_bytes
    # Silence before each packet: the missing ones as long as the packet before, capped.
    silence = np.zeros(len(seqs), dtype=np.int64)
    if len(seqs) > 1:
        missing = np.diff(seqs) - 1
        silence[1:] = np.minimum(missing * samples[:-1], int(MAX_GAP_S * fmt.rate))
    begin = np.cumsum(silence + samples) - samples  # each packet's first sample
    breaks = np.ones(len(seqs), dtype=bool)
    if len(seqs) > 1:
        breaks[1:] = (row[1:] != row[:-1]) | (at[1:] != at[:-1] + size[:-1]) | (silence[1:] > 0)
    first = np.flatnonzero(breaks)
    lengths = np.add.reduceat(samples, first) if len(first) else np.zeros(0, dtype=np.int64)
    total = int(begin[-1] + samples[-1]) if len(seqs) else 0
    return TrackLine(
        track, offset, begin[first], lengths.astype(np.int64), row[first], at[first], total
    )


def texts(heads: list[SegmentHead], payloads: dict[int, bytes]) -> list[str]:
    """The data of text rows' packets, track by track in sequence order (the mock reads it)."""
    found: list[tuple[int, int, str]] = []
    for i, head in enumerate(heads):
        if head.encoding != TEXT:
            continue
        payload, at = payloads[i], 0
        for sequence, size in zip(head.sequences, head.sizes, strict=True):
            found.append((head.track, sequence, payload[at : at + size].decode()))
            at += size
    return [data for _, _, data in sorted(found)]


__all__ = [
    "NotAudio",
    "Recording",
    "SegmentsInMemory",
    "UnsupportedAudio",
    "build_rows",
    "call_format",
    "texts",
]
