"""A call's recording from its stored segments (core/recording.py's load_recording, and
jobs/audio.py's windows of it for the providers), served from memory as PostgreSQL would: order
across segments, silence for gaps, two tracks, undecodable data, and memory that stays bounded
however long the call."""

from __future__ import annotations

import base64
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest

from core.audio import AudioFormat, decode, mulaw_encode, parse_format
from core.recording import MAX_GAP_S, NotAudio, Recording, build_rows, load_recording, texts
from db.packets import StoredPacket
from db.segments import TEXT, SegmentHead, runs_of
from jobs.ai import Spoken
from jobs.audio import TrackAudio, TrackText, UndecodableAudio, transcription_allowance_s
from tests.conftest import make_settings
from tests.segments_in_memory import SegmentsInMemory

TWILIO = {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
MULAW = "audio/x-mulaw;rate=8000"
MULAW_8K = AudioFormat("mulaw", 8000)
SETTINGS = make_settings("postgresql://x", "redis://x")


def packet(sequence: int, data: str, track: int = 0, at: float | None = None) -> StoredPacket:
    stamp = sequence * 0.02 if at is None else at
    return StoredPacket(sequence, stamp, data, 1.7e9 + stamp, track, (sequence, track))


class Segments(SegmentsInMemory):
    """Segments in memory, built as the worker builds them, counting what is read."""

    def __init__(
        self, segments: list[list[StoredPacket]], metadata: dict[str, Any] | None = None
    ) -> None:
        media = (metadata or {}).get("mediaFormat")
        fmt = parse_format(f"{media['encoding']};rate={media['sampleRate']}") if media else None
        built = fmt or parse_format(MULAW)
        super().__init__([build_rows(seg, built, media is not None) for seg in segments])
        self.metadata = metadata
        self.payloads_read = 0

    async def payload(self, segment: int, track: int) -> bytes:
        self.payloads_read += 1
        return await super().payload(segment, track)


async def recording_of(
    source: SegmentsInMemory, metadata: dict[str, Any] | None = None, default: str = MULAW
) -> Recording:
    settings = SETTINGS.model_copy(update={"packet_audio_encoding": default})
    return await load_recording(source, metadata, settings)


def frame(level: int, samples: int = 160) -> str:
    """One packet of constant audio at `level`, as base64 μ-law."""
    return base64.b64encode(mulaw_encode(np.full(samples, level, dtype=np.int16))).decode()


async def pcm_of(source: Segments) -> np.ndarray:
    """A one-track call's audio, gaps filled."""
    recording = await recording_of(source, source.metadata)
    return await recording.track(0, 0, recording.samples)


def whole_track(recording: Recording, channel: int = 0) -> TrackAudio:
    return TrackAudio(recording, channel, 0, recording.lines[channel].samples)


async def test_packets_are_decoded_in_sequence_order_across_segments():
    # Sequence 1 arrived late, after its neighbours were flushed: it is in a later segment.
    source = Segments(
        [[packet(s, frame(100 * (s + 1))) for s in (4, 0, 2)], [packet(1, frame(200))],
         [packet(3, frame(400))]],
        TWILIO,
    )  # fmt: skip

    pcm = await pcm_of(source)

    levels = pcm.reshape(5, 160)[:, 0]
    expected = decode(mulaw_encode(np.array([100, 200, 300, 400, 500], dtype=np.int16)), MULAW_8K)
    assert levels.tolist() == expected.tolist()


async def test_audio_is_stored_decoded_once_and_text_as_sent():
    audio_rows = build_rows([packet(0, frame(10)), packet(1, frame(20))], MULAW_8K, said=True)
    text_rows = build_rows([packet(0, "hello"), packet(1, "world")], MULAW_8K, said=False)
    # Over HTTP a short word that happens to be base64 stays a word.
    word_rows = build_rows([packet(0, "test")], MULAW_8K, said=False)

    assert [(r.encoding, len(r.payload), r.sizes) for r in audio_rows] == [(MULAW, 320, [160, 160])]
    assert [(r.encoding, r.payload) for r in text_rows] == [(TEXT, b"helloworld")]
    assert word_rows[0].encoding == TEXT


async def test_a_missing_sequence_of_a_media_stream_is_one_20_ms_frame_of_silence():
    source = Segments([[packet(s, frame(1000)) for s in (0, 1, 3, 6)]], TWILIO)

    pcm = await pcm_of(source)

    assert len(pcm) == 7 * 160  # timings stay true
    silent = [i for i, f in enumerate(pcm.reshape(7, 160)) if not f.any()]
    assert silent == [2, 4, 5]


async def test_a_gap_between_http_packets_is_as_long_as_the_packet_before_it():
    source = Segments([[packet(s, frame(1000, 400), at=s * 0.05) for s in (0, 1, 3)]])

    pcm = await pcm_of(source)

    assert len(pcm) == 4 * 400
    assert not pcm[800:1200].any()
    assert pcm[1200:].all()


async def test_a_run_of_missing_packets_becomes_at_most_max_gap_s_of_silence():
    source = Segments([[packet(0, frame(1000)), packet(10**9, frame(1000))]], TWILIO)

    pcm = await pcm_of(source)

    assert len(pcm) == 2 * 160 + int(MAX_GAP_S * 8000)


async def test_two_tracks_are_two_channels_aligned_by_their_first_timestamps():
    # The agent starts 100 ms after the caller; each track has its own gap.
    inbound = [packet(s, frame(1000), 0, at=s * 0.02) for s in (1, 2, 4)]
    outbound = [packet(s, frame(-1000), 1, at=0.1 + s * 0.02) for s in (1, 3)]
    source = Segments([inbound + outbound], TWILIO)

    recording = await recording_of(source, source.metadata)
    frames = await recording.frames(0, recording.samples)

    assert recording.channels == 2
    left, right = frames[:, 0].reshape(-1, 160), frames[:, 1].reshape(-1, 160)
    assert [bool(f.any()) for f in left] == [True, True, False, True, False, False, False, False]
    assert [bool(f.any()) for f in right] == [False] * 5 + [True, False, True]
    assert (left[0] > 0).all()
    assert (right[5] < 0).all()


async def test_the_wav_file_answers_every_byte_range_exactly():
    source = Segments([[packet(s, frame(300 * s)) for s in range(30)], [packet(31, frame(9))]])
    recording = await recording_of(source, source.metadata)
    whole = b"".join([c async for c in recording.wav_bytes(0, recording.wav_size - 1)])

    assert len(whole) == recording.wav_size == 44 + 32 * 160 * 2
    assert whole[:4] == b"RIFF"
    assert whole[8:12] == b"WAVE"
    for first, last in [(0, 0), (0, 43), (43, 44), (44, 45), (1000, 9999), (100, len(whole) - 1)]:
        part = b"".join([c async for c in recording.wav_bytes(first, last)])
        assert part == whole[first : last + 1]


async def test_the_encoding_comes_from_the_media_format_else_from_the_setting():
    alaw_stream = {"mediaFormat": {"encoding": "audio/x-alaw", "sampleRate": 8000}}
    data = frame(3000)

    from_stream = (
        await recording_of(Segments([[packet(0, data)]], alaw_stream), alaw_stream)
    ).format
    as_text = SegmentsInMemory([build_rows([packet(0, data)], None, False)])
    from_setting = (await recording_of(as_text, None, "audio/L16;rate=16000")).format

    assert from_stream == AudioFormat("alaw", 8000)
    assert from_setting == AudioFormat("l16", 16000)


@pytest.mark.parametrize(
    ("packets", "metadata", "says"),
    [
        ([frame(10), "chunk-1"], TWILIO, "packet 1's data is not base64"),
        (["AAAAAA==", "AA=="], None, "packet 1 is not audio/L16;rate=8000: 1 bytes"),
        ([frame(10)], {"mediaFormat": {"encoding": "audio/opus", "sampleRate": 48000}}, "opus"),
    ],
)
async def test_data_that_is_not_audio_in_the_calls_encoding_is_undecodable(packets, metadata, says):
    default = "audio/L16;rate=8000" if metadata is None else MULAW
    rows = SegmentsInMemory(
        [build_rows([packet(n, d) for n, d in enumerate(packets)], None, False)]
    )
    with pytest.raises(NotAudio, match=says) as refused:
        await recording_of(rows, metadata, default)
    # What a real provider is told of it: a permanent failure naming the problem.
    with pytest.raises(UndecodableAudio, match=says) as caught:
        await TrackText([], str(refused.value)).format()

    assert str(caught.value).startswith("the call's audio cannot be decoded: ")


async def test_the_mock_reads_text_packets_as_sent_in_sequence_order():
    source = Segments([[packet(2, "c"), packet(0, "a")], [packet(1, "b")]])

    heads = await source.heads()
    payloads = {i: await source.payload(h.segment, h.track) for i, h in enumerate(heads)}

    assert texts(heads, payloads) == ["a", "b", "c"]


async def test_the_calls_length_is_known_from_its_heads_before_its_audio_is_read():
    source = Segments([[packet(s, frame(10)) for s in range(0, 500) if s != 7]], TWILIO)

    recording = await recording_of(source, source.metadata)

    assert recording.seconds == pytest.approx(500 * 0.02)
    assert (len(recording.lines), source.payloads_read) == (1, 0)


def test_a_transcription_gets_more_time_for_a_longer_call_within_the_jobs_limit():
    local = make_settings("postgresql://x", "redis://x", ai_provider="local")
    mock = make_settings("postgresql://x", "redis://x")

    assert transcription_allowance_s(local, 60) == pytest.approx(30)  # 0.5 s a second
    assert transcription_allowance_s(local, 3600) == 600 - 300 - 30  # what the job leaves
    assert transcription_allowance_s(mock, 3600) == 0


async def test_a_providers_pieces_are_cut_at_quiet_frames_and_hold_the_whole_call():
    # 30 s of tone with a silent frame at 17 s: the first piece (at most 20 s) ends there.
    source = Segments([[packet(s, frame(0 if s == 850 else 4000)) for s in range(1500)]], TWILIO)

    recording = await recording_of(source, source.metadata)
    pieces = [p async for p in whole_track(recording).pieces(max_s=20, search_s=5)]

    assert [len(p) for p in pieces] == [850 * 160, 650 * 160]


class HourLongCall:
    """An hour of 20 ms μ-law packets (29 MB of audio) in 30 s segments, made as it is read."""

    segments = 120
    per_segment = 1500

    def __init__(self) -> None:
        self.audio = mulaw_encode(np.full(160, 2000, dtype=np.int16)) * self.per_segment

    async def heads(self) -> list[SegmentHead]:
        n = self.per_segment
        return [
            SegmentHead(k, 0, MULAW, runs_of(range(k * n, (k + 1) * n), [160] * n, [0.0] * n,
                                            [0.0] * n, by_size=False))
            for k in range(self.segments)
        ]  # fmt: skip

    async def payload(self, segment: int, track: int) -> bytes:
        return self.audio

    async def payload_slice(self, segment: int, track: int, start: int, length: int) -> bytes:
        return self.audio[start : start + length]


async def test_an_hour_long_calls_audio_is_assembled_in_bounded_memory():
    # The heads: arrays of the call's packets, read once.
    audio = whole_track(await recording_of(HourLongCall(), TWILIO))  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        samples = 0
        async for piece in audio.pieces(max_s=20, search_s=5):
            samples += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert samples == 3600 * 8000
    # The hour is 58 MB as 16-bit PCM; a block (10 s), a piece (20 s) and a few slices are held.
    assert peak < 6 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


class PastFourGiB:
    """Two tracks of 6.5 hours of 48 kHz L16 each, one packet a track, made as it is read."""

    packet_bytes = 48_000 * 2 * 23_400  # 2.2 GB a track: the WAV's data is 4.5 GB

    async def heads(self) -> list[SegmentHead]:
        return [
            SegmentHead(0, t, "audio/L16;rate=48000",
                        runs_of([0], [self.packet_bytes], [0.0], [0.0], by_size=False))
            for t in (0, 1)
        ]  # fmt: skip

    async def payload(self, segment: int, track: int) -> bytes:
        raise AssertionError("a recording never reads a whole row")

    async def payload_slice(self, segment: int, track: int, start: int, length: int) -> bytes:
        length = max(min(length, self.packet_bytes - start), 0)
        return np.full(length // 2, 1000 * (track + 1), dtype=">i2").tobytes()


async def test_a_recording_past_4_gib_is_an_rf64_file_read_by_ranges():
    recording = await Recording.load(PastFourGiB(), parse_format("audio/L16;rate=48000"), 1e9)

    data = PastFourGiB.packet_bytes * 2
    header = b"".join([c async for c in recording.wav_bytes(0, 79)])
    tail = b"".join([c async for c in recording.wav_bytes(recording.wav_size - 8, 10**12)])

    assert recording.wav_size == 80 + data > 2**32
    assert header[:4] == b"RF64"
    assert header[8:16] == b"WAVEds64"
    assert struct.unpack("<IQQQ", header[16:44]) == (28, 72 + data, data, data // 4)
    assert header[72:80] == b"data\xff\xff\xff\xff"
    assert np.frombuffer(tail, "<i2").tolist() == [1000, 2000, 1000, 2000]


async def test_the_transcriber_is_given_only_stored_audio_and_its_times_are_put_back():
    # 1 s of audio, 3 s missing (its timestamps say so), 1 s of audio.
    frames = [packet(s, frame(2000), at=s * 0.02) for s in [*range(50), *range(200, 250)]]
    source = Segments([frames], TWILIO)
    recording = await Recording.load(source, MULAW_8K, 4 * 3600)

    audio = TrackAudio(recording, 0, 0, recording.samples)
    given = np.concatenate([block async for block in audio.pcm()])

    assert recording.samples == 5 * 8000
    assert audio.spans == [(0, 8000), (32000, 40000)]
    assert len(given) == 16000
    assert given.all()
    assert audio.seconds == 2.0
    assert audio.placed(Spoken(0.5, 1.5, "hi")) == Spoken(0.5, 4.5, "hi")


async def test_silence_put_in_for_gaps_never_takes_a_track_past_the_calls_bound():
    # Each gap claims 60 s by sequence and by timestamp: the bound (10 s) holds.
    frames = [packet(s * 3000, frame(2000), at=s * 60.0) for s in range(100)]
    recording = await Recording.load(Segments([frames], TWILIO), MULAW_8K, 10.0)

    # The first gap fills the track up to 10 s; the rest of its frames follow back to back.
    assert recording.samples == 10 * 8000 + 99 * 160
    assert recording.lines[0].stored == 100 * 160
    assert recording.lines[0].spans(0, recording.samples) == [(0, 160), (80_000, 80_000 + 99 * 160)]


async def test_the_bound_leaves_what_came_before_in_place_when_more_packets_come():
    frames = [packet(s * 3000, frame(2000), at=s * 60.0) for s in range(100)]
    early = await Recording.load(Segments([frames[:60]], TWILIO), MULAW_8K, 10.0)
    later = await Recording.load(Segments([frames[:60], frames[60:]], TWILIO), MULAW_8K, 10.0)

    assert later.lines[0].spans(0, early.samples) == early.lines[0].spans(0, early.samples)


class EveryPacketAfterAGap:
    """200,000 frames, each two frames after the last (40 rows of 5,000): a piece a packet."""

    async def heads(self) -> list[SegmentHead]:
        heads = []
        for k in range(40):
            seq = np.arange(k * 5000, (k + 1) * 5000, dtype=np.int64) * 3
            stamps = (seq * 0.02).astype(np.float64)
            runs = runs_of(seq, np.full(5000, 160), stamps, stamps, by_size=False)
            heads.append(SegmentHead(k, 0, MULAW, runs))
        return heads

    async def payload(self, segment: int, track: int) -> bytes:
        raise AssertionError("a recording never reads a whole row")

    async def payload_slice(self, segment: int, track: int, start: int, length: int) -> bytes:
        return b"\xff" * length


async def test_a_call_whose_every_packet_follows_a_gap_holds_about_50_bytes_a_gap():
    tracemalloc.start()
    try:
        recording = await Recording.load(EveryPacketAfterAGap(), MULAW_8K, 4 * 3600)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(recording.lines[0].starts) == 200_000
    # docs/operations.md: 9.6 MB held, 45 MB at the peak (the heads' runs, then the timeline).
    assert held < 12 * 1024 * 1024, held
    assert peak < 56 * 1024 * 1024, peak
