"""A call's audio from its packets (jobs/audio.py), over a fake source of pages: order, silence
for gaps, undecodable data, and memory that stays bounded however long the call."""

from __future__ import annotations

import base64
import tracemalloc
from typing import Any

import numpy as np
import pytest

from core.audio import AudioFormat, decode, mulaw_encode
from db.call_audio import PacketFigures
from jobs.audio import MAX_GAP_S, CallAudio, UndecodableAudio, transcription_allowance_s
from tests.conftest import make_settings

TWILIO = {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
MULAW = "audio/x-mulaw;rate=8000"
MULAW_8K = AudioFormat("mulaw", 8000)


class Packets:
    """The call's packets as db/call_audio.py's CallPackets serves them."""

    def __init__(self, packets: dict[int, str], metadata: dict[str, Any] | None = None) -> None:
        self.packets = dict(sorted(packets.items()))
        self.metadata = metadata
        self.pages_read = 0

    async def page(self, after: int, limit: int) -> list[tuple[int, str]]:
        self.pages_read += 1
        return [(s, d) for s, d in self.packets.items() if s > after][:limit]

    async def figures(self) -> PacketFigures:
        seqs = list(self.packets)
        chars = sum(len(d) for d in self.packets.values())
        first, last = (seqs[0], seqs[-1]) if seqs else (None, None)
        return PacketFigures(self.metadata, len(seqs), first, last, chars)


def frame(level: int, samples: int = 160) -> str:
    """One packet of constant audio at `level`, as base64 μ-law."""
    return base64.b64encode(mulaw_encode(np.full(samples, level, dtype=np.int16))).decode()


async def pcm_of(audio: CallAudio) -> np.ndarray:
    return np.concatenate([chunk async for chunk in audio.pcm()])


async def test_packets_are_decoded_in_sequence_order_across_pages():
    source = Packets({s: frame(100 * (s + 1)) for s in (4, 0, 2, 1, 3)}, TWILIO)
    audio = CallAudio("c", source, MULAW, page_packets=2)

    pcm = await pcm_of(audio)

    levels = pcm.reshape(5, 160)[:, 0]
    expected = decode(mulaw_encode(np.array([100, 200, 300, 400, 500], dtype=np.int16)), MULAW_8K)
    assert levels.tolist() == expected.tolist()
    assert source.pages_read == 3


async def test_a_missing_sequence_of_a_media_stream_is_one_20_ms_frame_of_silence():
    source = Packets({0: frame(1000), 1: frame(1000), 3: frame(1000), 6: frame(1000)}, TWILIO)

    pcm = await pcm_of(CallAudio("c", source, MULAW, page_packets=2))

    assert len(pcm) == 7 * 160  # timings stay true
    silent = [i for i, f in enumerate(pcm.reshape(7, 160)) if not f.any()]
    assert silent == [2, 4, 5]


async def test_a_gap_between_http_packets_is_as_long_as_the_packet_before_it():
    source = Packets({0: frame(1000, 400), 1: frame(1000, 400), 3: frame(1000, 400)})

    pcm = await pcm_of(CallAudio("c", source, MULAW))

    assert len(pcm) == 4 * 400
    assert not pcm[800:1200].any()
    assert pcm[1200:].all()


async def test_a_run_of_missing_packets_becomes_at_most_max_gap_s_of_silence():
    source = Packets({0: frame(1000), 10**9: frame(1000)}, TWILIO)

    pcm = await pcm_of(CallAudio("c", source, MULAW))

    assert len(pcm) == 2 * 160 + int(MAX_GAP_S * 8000)


async def test_the_encoding_comes_from_the_media_format_else_from_the_setting():
    alaw_stream = {"mediaFormat": {"encoding": "audio/x-alaw", "sampleRate": 8000}}
    data = frame(3000)

    from_stream = await CallAudio("c", Packets({0: data}, alaw_stream), MULAW).format()
    from_setting = await CallAudio("c", Packets({0: data}), "audio/L16;rate=16000").format()

    assert from_stream == AudioFormat("alaw", 8000)
    assert from_setting == AudioFormat("l16", 16000)


@pytest.mark.parametrize(
    ("packets", "metadata", "says"),
    [
        ({0: frame(10), 1: "chunk-1"}, TWILIO, "packet 1's data is not base64"),
        ({0: "AAAAAA==", 1: "AA=="}, None, "packet 1 is not audio/L16;rate=8000: 1 bytes"),
        ({0: frame(10)}, {"mediaFormat": {"encoding": "audio/opus", "sampleRate": 48000}}, "opus"),
    ],
)
async def test_data_that_is_not_audio_in_the_calls_encoding_is_undecodable(packets, metadata, says):
    default = "audio/L16;rate=8000" if metadata is None else MULAW
    audio = CallAudio("c", Packets(packets, metadata), default)

    with pytest.raises(UndecodableAudio, match=says) as caught:
        await pcm_of(audio)

    assert str(caught.value).startswith("the call's audio cannot be decoded: ")


async def test_the_mock_reads_the_packets_data_as_sent_in_sequence_order():
    source = Packets({2: "c", 0: "a", 1: "b"})

    assert await CallAudio("c", source, MULAW, page_packets=2).texts() == ["a", "b", "c"]
    kept = CallAudio("c", source, MULAW, kept=["kept"])
    assert await kept.texts() == ["kept"]
    assert source.pages_read == 2  # nothing read when the flush kept the data


async def test_the_calls_length_is_known_before_its_audio_is_read():
    source = Packets({s: frame(10) for s in range(0, 500) if s != 7}, TWILIO)

    facts = await CallAudio("c", source, MULAW).facts()

    assert facts.seconds == pytest.approx(500 * 0.02, rel=0.02)  # base64's padding aside
    assert source.pages_read == 0


def test_a_transcription_gets_more_time_for_a_longer_call_within_the_jobs_limit():
    local = make_settings("postgresql://x", "redis://x", ai_provider="local")
    mock = make_settings("postgresql://x", "redis://x")

    assert transcription_allowance_s(local, 60) == pytest.approx(90)  # 1.5 s a second
    assert transcription_allowance_s(local, 3600) == 600 - 300 - 30  # what the job leaves
    assert transcription_allowance_s(mock, 3600) == 0


async def test_segments_are_cut_at_quiet_frames_and_hold_the_whole_call():
    # 30 s of tone with a silent frame at 17 s: the first segment (at most 20 s) ends there.
    packets = {s: frame(0 if s == 850 else 4000) for s in range(1500)}
    audio = CallAudio("c", Packets(packets, TWILIO), MULAW)

    segments = [s async for s in audio.segments(max_s=20, search_s=5)]

    assert [len(s) for s in segments] == [850 * 160, 650 * 160]


class HourLongCall:
    """An hour of 20 ms μ-law packets (29 MB of audio), made page by page as it is read."""

    packets = 3600 * 50

    def __init__(self) -> None:
        self.payload = frame(2000)

    async def page(self, after: int, limit: int) -> list[tuple[int, str]]:
        return [(s, self.payload) for s in range(after + 1, min(after + 1 + limit, self.packets))]

    async def figures(self) -> PacketFigures:
        chars = self.packets * len(self.payload)
        return PacketFigures(TWILIO, self.packets, 0, self.packets - 1, chars)


async def test_an_hour_long_calls_audio_is_assembled_in_bounded_memory():
    audio = CallAudio("c", HourLongCall(), MULAW)
    tracemalloc.start()
    try:
        samples = 0
        async for segment in audio.segments(max_s=20, search_s=5):
            samples += len(segment)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert samples == 3600 * 8000
    # The hour is 58 MB as 16-bit PCM; a page (40 s) and a segment (20 s) are what is held.
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
