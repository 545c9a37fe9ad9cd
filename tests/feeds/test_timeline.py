"""service/feeds/timeline.py: raw audio of any framing as 20 ms packets, one timeline a track."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from core.audio import UnsupportedAudio
from db.packets import NewPacket, Track
from service.feeds.timeline import FeedFormat, Timeline

IN, OUT = Track.INBOUND, Track.OUTBOUND


def raw(packet: NewPacket) -> bytes:
    return base64.b64decode(packet.data)


def test_any_framing_gives_the_same_20ms_packets_numbered_from_0_timed_from_the_origin():
    audio = bytes(range(256)) * 5  # 1,280 μ-law samples: 8 frames
    whole = Timeline(FeedFormat("mulaw", 8000), 100.0).add(IN, audio)
    odd = Timeline(FeedFormat("mulaw", 8000), 100.0)
    packets = [p for at in range(0, len(audio), 37) for p in odd.add(IN, audio[at : at + 37])]
    assert packets == whole
    assert [p.sequence for p in whole] == list(range(8))
    assert [p.timestamp for p in whole] == pytest.approx([100.0 + 0.02 * n for n in range(8)])
    assert b"".join(raw(p) for p in whole) == audio
    assert {len(raw(p)) for p in whole} == {160}


def test_the_end_stores_the_last_part_frame_as_a_short_packet():
    timeline = Timeline(FeedFormat("slin", 16000), 0.0)
    assert timeline.add(IN, bytes(640 + 100)) != []
    (last,) = timeline.finish()
    assert (last.sequence, len(raw(last))) == (1, 100)
    assert timeline.finish() == []


def test_slin_is_stored_as_big_endian_l16_sample_for_sample():
    samples = np.array([1, -2, 300, -32768, 32767] * 32, dtype=np.int16)  # 160: one frame
    (packet,) = Timeline(FeedFormat("slin", 8000), 0.0).add(IN, samples.astype("<i2").tobytes())
    assert np.array_equal(np.frombuffer(raw(packet), dtype=">i2"), samples)
    assert FeedFormat("slin", 8000).media_format() == {
        "encoding": "audio/L16", "sampleRate": 8000, "channels": 1
    }  # fmt: skip


def test_interleaved_stereo_is_left_to_the_first_track_and_right_to_the_second():
    left = np.arange(160, dtype=np.int16)
    right = -np.arange(160, dtype=np.int16)
    stereo = np.stack([left, right], axis=1).astype("<i2").tobytes()
    packets = Timeline(FeedFormat("slin", 8000, 2), 0.0).add_interleaved(stereo, (IN, OUT))
    by_track = {p.track: np.frombuffer(raw(p), dtype=">i2") for p in packets}
    assert np.array_equal(by_track[IN], left)
    assert np.array_equal(by_track[OUT], right)
    assert {p.sequence for p in packets} == {0}


def test_a_pause_moves_the_timeline_on_and_fills_the_part_frame_with_silence():
    timeline = Timeline(FeedFormat("mulaw", 8000), 0.0)
    assert timeline.add(IN, b"\x10" * 100) == []
    (filled,) = timeline.skip_to(IN, 1.0)  # a second later: frames 1..49 are a gap
    assert raw(filled) == b"\x10" * 100 + b"\xff" * 60
    (after,) = timeline.add(IN, b"\x20" * 160)
    assert after.sequence == 50
    assert after.timestamp == pytest.approx(1.0)
    assert timeline.skip_to(IN, 0.5) == []  # behind the track: nothing changes
    assert timeline.position_s(IN) == pytest.approx(1.02)


def test_part_samples_are_refused():
    with pytest.raises(UnsupportedAudio, match="whole slin samples"):
        Timeline(FeedFormat("slin", 8000), 0.0).add(IN, bytes(3))
    stereo = Timeline(FeedFormat("slin", 8000, 2), 0.0)
    with pytest.raises(UnsupportedAudio, match="whole stereo samples"):
        stereo.add_interleaved(bytes(6), (IN, OUT))


@pytest.mark.parametrize(
    ("codec", "rate", "channels"),
    [("slin", 96000, 1), ("slin", 192000, 1), ("mulaw", 16000, 1), ("slin", 8000, 3)],
)
def test_formats_that_cannot_be_stored_are_refused(codec: str, rate: int, channels: int):
    with pytest.raises(UnsupportedAudio):
        FeedFormat(codec, rate, channels)  # type: ignore[arg-type]
