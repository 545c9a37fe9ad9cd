"""A call's recording: how its packets become stored segments, and how the segments are read back
as 16-bit PCM per track, mono or stereo, and as a WAV file with byte ranges. `load_recording` is
the one way a call's recording is loaded, or refused (NotAudio) when the call sent no audio in a
format we decode: for its WAV, its transcription and its figures.

Storing (`build_rows`): each track's packets of a segment, in sequence order, become one row.
When every packet is canonical base64 of whole samples of the call's audio format, the row holds
the decoded bytes (3/4 of the base64, and nothing else a packet); otherwise it holds the data as
sent (the mock's callers send text) and is decoded, if ever, when read. Over HTTP, where the
format is only PACKET_AUDIO_ENCODING's claim, a packet must also be at least MIN_AUDIO_MS long to
count as audio: a word such as "test" is valid base64 of three bytes, and must stay a word.

Reading (`Recording`): a track's packets from all its segments, merged by sequence (a late packet
lands in a later segment and is put back in its place), with silence for the missing ones: as
long as the packet before the gap, at most MAX_GAP_S (a hole in the numbering is not a silence
in the conversation), at most the time the neighbours' timestamps or arrivals say passed, and
none once the track is MAX_CALL_SECONDS long (`_track_line`). Consecutive packets of one row
are one piece; the timeline (a few numbers a piece) is held, and slices of SLICE_BYTES of a row's
bytes, a few at a time, so memory stays bounded by the slices and the call's runs of
consecutive packets, never by its audio or its packets' sizes; a text row is measured a slice
at a time. Two tracks are aligned by their
first packets' timestamps (Twilio's media.timestamp counts per track from the stream's start):
channel 0 (left) is inbound, the caller; channel 1 (right) is outbound, the agent.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any, Protocol

import numpy as np

from core.audio import (
    AudioFormat,
    Samples,
    UnsupportedAudio,
    decode,
    from_media_format,
    parse_format,
    wav_header,
)
from core.packet_audio import audio_of_all
from db.packets import StoredPacket
from db.segments import TEXT, Floats, Ints, SegmentHead, SegmentRow
from settings import Settings

MIN_AUDIO_MS = 10
MAX_GAP_S = 60.0
MAX_ALIGN_S = 60.0  # the most one track may start after the other
BLOCK_S = 1.0  # a WAV's PCM is produced a second at a time
SLICE_BYTES = 256 * 1024  # a row's bytes are read this many at a time: 30 s of 8 kHz μ-law
PAYLOAD_CACHE = 4  # slices held at once


class NotAudio(ValueError):
    """The call's packets are not audio in its format: says which packet, and why."""


def call_format(metadata: dict[str, Any] | None, default_format: str) -> tuple[AudioFormat, bool]:
    """The call's audio format and whether the call said it (a media stream's mediaFormat) or
    it is PACKET_AUDIO_ENCODING's claim; raises UnsupportedAudio for one we cannot decode."""
    media_format = (metadata or {}).get("mediaFormat")
    if media_format is not None:
        return from_media_format(media_format), True
    return parse_format(default_format), False


def build_rows(
    packets: Sequence[StoredPacket], fmt: AudioFormat | None, said: bool
) -> list[SegmentRow]:
    """A segment's rows, one per track, from its packets (any order). `said`: the call gave its
    format (a media stream), so any whole samples are audio."""
    rows = []
    for track in sorted({p.track for p in packets}):
        group = sorted((p for p in packets if p.track == track), key=_by_sequence)
        datas = [p.data for p in group]
        audio = None
        if fmt is not None:
            min_bytes = 1 if said else fmt.rate * MIN_AUDIO_MS // 1000 * fmt.sample_bytes
            audio = audio_of_all(datas, fmt.sample_bytes, min_bytes)
        if audio is None:
            parts = [data.encode() for data in datas]
            encoding, payload, sizes = TEXT, b"".join(parts), [len(part) for part in parts]
        else:
            encoding, (payload, sizes) = str(fmt), audio
        rows.append(
            SegmentRow(
                track=track,
                encoding=encoding,
                sequences=[p.sequence for p in group],
                sizes=sizes,
                timestamps=[p.timestamp for p in group],
                arrivals=[p.received_at for p in group],
                payload=payload,
            )
        )
    return rows


_by_sequence = attrgetter("sequence")


class SegmentSource(Protocol):
    """A call's stored segments (db/segments.py's SegmentReader)."""

    async def heads(self) -> list[SegmentHead]: ...

    async def payload(self, segment: int, track: int) -> bytes: ...

    async def payload_slice(self, segment: int, track: int, start: int, length: int) -> bytes: ...


@dataclass(frozen=True, slots=True, eq=False)
class TrackLine:
    """One track's timeline: its audio pieces (runs of consecutive packets of one row, of one
    size in a text row); what lies between them is silence."""

    track: int
    offset: int  # samples of silence before its first packet (aligning two tracks)
    starts: Ints  # each piece's first sample, from the track's start
    lengths: Ints  # samples
    rows: Ints  # the row (index into Recording.rows) holding the piece
    at: Ints  # the piece's first byte in that row
    stride: Ints  # a text piece's bytes of base64 a packet (0: a piece of audio bytes)
    per: Ints  # a text piece's samples a packet
    samples: int  # the track's length, gaps included

    def cut(self, end: int) -> TrackLine:
        """The line up to sample `end` of its own timeline, nothing after it."""
        lengths = np.clip(end - self.starts, 0, self.lengths).astype(np.int64)
        return replace(self, lengths=lengths, samples=max(0, min(self.samples, end)))

    @property
    def stored(self) -> int:
        """Samples of stored audio; the rest of `samples` is silence put in for gaps."""
        return int(self.lengths.sum())

    def spans(self, start: int, end: int) -> list[tuple[int, int]]:
        """The stretches of [start, end) (on the track's own timeline) that hold stored audio,
        in order: what a transcriber is given, never the silence put in for a gap."""
        found: list[tuple[int, int]] = []
        i = max(int(np.searchsorted(self.starts, start, side="right")) - 1, 0)
        while i < len(self.starts) and int(self.starts[i]) < end:
            a = max(start, int(self.starts[i]))
            b = min(end, int(self.starts[i] + self.lengths[i]))
            if b > a:
                if found and found[-1][1] == a:
                    found[-1] = (found[-1][0], b)
                else:
                    found.append((a, b))
            i += 1
        return found


@dataclass(frozen=True, slots=True)
class _Units:
    """A track's packets as units (a run of a byte row, or a run of one decoded size of a text
    row), before they are placed on its timeline."""

    first: Ints
    count: Ints
    row: Ints
    at: Ints
    size: Ints  # bytes in the row
    samples: Ints
    last_samples: Ints  # its last packet's samples: how long a missing packet after it is
    stride: Ints
    per: Ints
    first_timestamp: Floats
    last_timestamp: Floats
    first_arrival: Floats
    last_arrival: Floats


def _byte_units(row: int, head: SegmentHead, fmt: AudioFormat) -> list[Ints | Floats]:
    r = head.runs
    n = len(r.first)
    zero = np.zeros(n, dtype=np.int64)
    return [
        r.first, r.count, np.full(n, row, dtype=np.int64), r.at, r.size,
        r.size // fmt.sample_bytes, r.last_size // fmt.sample_bytes, zero, zero,
        r.first_timestamp, r.last_timestamp, r.first_arrival, r.last_arrival,
    ]  # fmt: skip


async def _text_units(
    source: SegmentSource, row: int, head: SegmentHead, fmt: AudioFormat
) -> list[Ints | Floats]:
    """A text row read as audio, a slice at a time (only its packets' decoded sizes are kept):
    each packet's data base64 of whole samples, or NotAudio."""
    r = head.runs
    cols: list[list[float]] = [[] for _ in range(13)]
    for k in range(len(r.first)):
        stride, count = int(r.last_size[k]), int(r.count[k])
        sizes: list[int] = []
        step = max(1, SLICE_BYTES // max(stride, 1))
        for j0 in range(0, count, step):
            n = min(step, count - j0)
            data = await source.payload_slice(
                head.segment, head.track, int(r.at[k]) + j0 * stride, n * stride
            )
            for j in range(n):
                sequence = int(r.first[k]) + j0 + j
                try:
                    raw = base64.b64decode(data[j * stride : (j + 1) * stride], validate=True)
                except (binascii.Error, ValueError):
                    raise NotAudio(f"packet {sequence}'s data is not base64") from None
                if len(raw) % fmt.sample_bytes:
                    raise NotAudio(f"packet {sequence} is not {fmt}: {len(raw)} bytes")
                sizes.append(len(raw) // fmt.sample_bytes)
        # Sub-runs of one decoded size (a packet's padding may differ from its neighbours').
        per = np.asarray(sizes, dtype=np.int64)
        cuts = np.flatnonzero(np.diff(per) != 0) + 1
        for a, b in zip(np.concatenate(([0], cuts)), np.append(cuts, count), strict=True):
            p = int(per[a])
            values = [
                int(r.first[k]) + a, b - a, row, int(r.at[k]) + a * stride, (b - a) * stride,
                (b - a) * p, p, stride, p, float(r.first_timestamp[k]),
                float(r.last_timestamp[k]), float(r.first_arrival[k]), float(r.last_arrival[k]),
            ]  # fmt: skip
            for col, value in zip(cols, values, strict=True):
                col.append(value)
    ints: list[Ints | Floats] = [np.asarray(col, dtype=np.int64) for col in cols[:9]]
    return ints + [np.asarray(col, dtype=np.float64) for col in cols[9:]]


async def _units(
    source: SegmentSource, heads: list[SegmentHead], track: int, fmt: AudioFormat
) -> _Units:
    parts = []
    for row, head in enumerate(heads):
        if head.track != track:
            continue
        if head.encoding == TEXT:
            parts.append(await _text_units(source, row, head, fmt))
        elif head.encoding != str(fmt):
            raise NotAudio(f"segment {head.segment} is {head.encoding}, not {fmt}")
        else:
            parts.append(_byte_units(row, head, fmt))
    # A column at a time, so that only one unsorted column is held beside the sorted ones.
    order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
    return _Units(*(np.concatenate([p[i] for p in parts])[order] for i in range(13)))


class Recording:
    """A call's recording, read lazily from its segments."""

    def __init__(
        self,
        source: SegmentSource,
        fmt: AudioFormat,
        rows: list[tuple[int, int]],
        lines: list[TrackLine],
    ) -> None:
        self.source = source
        self.format = fmt
        self.rows = rows  # each row's (segment, track), as TrackLine.rows index them
        self.lines = lines
        self.channels = max(1, len(lines))
        self.samples = max((line.offset + line.samples for line in lines), default=0)
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    @classmethod
    async def load(cls, source: SegmentSource, fmt: AudioFormat, max_call_s: float) -> Recording:
        """The timeline from the heads (and text rows, read a slice at a time: a text packet
        must be decoded to be measured); raises NotAudio when a packet is not audio in `fmt`.
        `max_call_s` (MAX_CALL_SECONDS): no silence is put in once a track is this long."""
        heads = await source.heads()
        tracks = sorted({h.track for h in heads if h.packets})
        units = {t: await _units(source, heads, t, fmt) for t in tracks}
        rows = [(h.segment, h.track) for h in heads]
        del heads  # their runs are in `units` now
        firsts = {t: float(u.first_timestamp[0]) for t, u in units.items()}
        origin = min(firsts.values(), default=0.0)
        lines = []
        for track in tracks:
            offset = 0
            if len(tracks) > 1:
                offset = round(min(max(firsts[track] - origin, 0.0), MAX_ALIGN_S) * fmt.rate)
            lines.append(_track_line(units[track], track, offset, fmt, max_call_s))
        return cls(source, fmt, rows, lines)

    @property
    def seconds(self) -> float:
        return self.samples / self.format.rate

    def heard_to(self, ends: dict[int, int]) -> Recording:
        """The recording of each track up to `ends[track]` (samples of its own timeline; none
        of a track not named): with audio redaction, what has been transcribed and silenced."""
        lines = [line.cut(ends.get(line.track, 0)) for line in self.lines]
        return Recording(self.source, self.format, self.rows, lines)

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

    # The recording as a WAV file: 16-bit PCM at the call's rate, one channel per track (RF64
    # past RIFF's 4 GiB, core/audio.py).
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
        last = min(last, self.wav_size - 1)
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
            end = min(start + block, data_last // frame + 1)
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
                row, skip, at = int(line.rows[i]), a - int(begins[i]), int(line.at[i])
                stride, per = int(line.stride[i]), int(line.per[i])
                if not stride:
                    raw = await self._read(row, at + skip * sample_bytes, (b - a) * sample_bytes)
                    out[a - start : b - start] = decode(raw, self.format)
                else:  # base64 packets of `per` samples each, decoded one by one
                    k0, k1 = skip // per, -(-(skip + b - a) // per)
                    text = await self._read(row, at + k0 * stride, (k1 - k0) * stride)
                    raw = b"".join(
                        base64.b64decode(text[j : j + stride]) for j in range(0, len(text), stride)
                    )
                    lead = skip - k0 * per
                    out[a - start : b - start] = decode(raw, self.format)[lead : lead + b - a]
            i += 1

    async def _read(self, row: int, start: int, length: int) -> bytes:
        """Bytes [start, start + length) of a row, from slices of SLICE_BYTES (a few cached)."""
        if length <= 0:
            return b""
        parts = []
        for n in range(start // SLICE_BYTES, (start + length - 1) // SLICE_BYTES + 1):
            piece = await self._slice(row, n)
            base = n * SLICE_BYTES
            parts.append(piece[max(start - base, 0) : start + length - base])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _slice(self, row: int, n: int) -> bytes:
        key = (row, n)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        segment, track = self.rows[row]
        piece = await self.source.payload_slice(segment, track, n * SLICE_BYTES, SLICE_BYTES)
        self._cache[key] = piece
        if len(self._cache) > PAYLOAD_CACHE:
            self._cache.popitem(last=False)
        return piece


async def load_recording(
    source: SegmentSource, metadata: dict[str, Any] | None, settings: Settings
) -> Recording:
    """The call's recording, in its format (its media stream's mediaFormat, else
    PACKET_AUDIO_ENCODING's), with no silence put in past MAX_CALL_SECONDS; NotAudio, saying
    why, when that format is one we cannot decode or a packet is not audio in it."""
    try:
        fmt, _ = call_format(metadata, settings.packet_audio_encoding)
    except UnsupportedAudio as exc:
        raise NotAudio(str(exc)) from None
    return await Recording.load(source, fmt, settings.max_call_seconds)


def _track_line(
    units: _Units, track: int, offset: int, fmt: AudioFormat, max_call_s: float
) -> TrackLine:
    """The track's units in sequence order, as pieces on its timeline. A missing run of packets
    becomes silence as long as the packet before it, but never longer than MAX_GAP_S, nor than
    the time its neighbours say passed between them (by the sender's timestamps or by their
    arrivals, whichever says more), and no silence is put in once the track is `max_call_s`
    long (its audio may go on after). Every product is of clamped numbers: nothing overflows."""
    u = units
    rate = fmt.rate
    n = len(u.first)
    longest = int(MAX_GAP_S * rate)
    silence = np.zeros(n, dtype=np.int64)
    if n > 1:
        missing = np.clip(u.first[1:] - (u.first[:-1] + u.count[:-1]), 0, longest)
        by_count = np.minimum(missing * u.last_samples[:-1], longest)
        elapsed_s = (
            np.maximum(
                u.first_timestamp[1:] - u.last_timestamp[:-1],
                u.first_arrival[1:] - u.last_arrival[:-1],
            )
            - u.last_samples[:-1] / rate
        )
        elapsed = np.rint(np.clip(np.nan_to_num(elapsed_s), 0.0, MAX_GAP_S) * rate)
        silence[1:] = np.minimum(by_count, elapsed.astype(np.int64))
        # No silence once the track reaches max_call_s: what came before stays where it was
        # when later packets come (a live call's transcribed windows keep their places).
        limit = int(max_call_s * rate)
        starts = np.cumsum(silence) + np.cumsum(u.samples) - u.samples
        over = np.flatnonzero(starts > limit)
        if len(over):
            k = int(over[0])
            silence[k] = max(0, limit - int(starts[k] - silence[k]))
            silence[k + 1 :] = 0
    begin = np.cumsum(silence + u.samples) - u.samples  # each unit's first sample
    breaks = np.ones(n, dtype=bool)
    if n > 1:
        breaks[1:] = (
            (u.row[1:] != u.row[:-1])
            | (u.at[1:] != u.at[:-1] + u.size[:-1])
            | (silence[1:] > 0)
            | (u.stride[1:] != u.stride[:-1])
            | (u.per[1:] != u.per[:-1])
        )
    first = np.flatnonzero(breaks)
    lengths = np.add.reduceat(u.samples, first) if n else np.zeros(0, dtype=np.int64)
    total = int(begin[-1] + u.samples[-1]) if n else 0
    return TrackLine(
        track, offset, begin[first], lengths.astype(np.int64), u.row[first], u.at[first],
        u.stride[first], u.per[first], total,
    )  # fmt: skip


def texts(heads: list[SegmentHead], payloads: dict[int, bytes]) -> list[str]:
    """The data of text rows' packets, track by track in sequence order (the mock reads it)."""
    found: list[tuple[int, int, str]] = []
    for i, head in enumerate(heads):
        if head.encoding != TEXT:
            continue
        payload, r = payloads[i], head.runs
        for k in range(len(r.first)):
            stride, at = int(r.last_size[k]), int(r.at[k])
            for j in range(int(r.count[k])):
                data = payload[at + j * stride : at + (j + 1) * stride].decode()
                found.append((head.track, int(r.first[k]) + j, data))
    return [data for _, _, data in sorted(found)]


__all__ = [
    "NotAudio",
    "Recording",
    "UnsupportedAudio",
    "build_rows",
    "call_format",
    "load_recording",
    "texts",
]
