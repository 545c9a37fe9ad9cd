"""bench/real_calls: the quick mode's pure parts, without a stack: the dialogue's frames, the
two-track messages (Twilio both_tracks numbering), and reading the answers back."""

from __future__ import annotations

from base64 import b64decode

import orjson

from bench.real_calls_client import _wav, received_of, stored_ticks
from bench.real_calls_frames import FRAME_BYTES, TwoTrackCall, dialogue_of
from bench.real_calls_load import flatness
from bench.real_calls_phases import QUICK
from core.audio import wav_header

CALLER = bytes(range(1, 200)) * 4  # 796 bytes: 5 frames, the last one padded
AGENT = bytes(range(50, 250)) * 2  # 400 bytes: 3 frames


def make_call(ticks: int = 30) -> TwoTrackCall:
    return TwoTrackCall("rc-test-1", ticks, dialogue_of([CALLER, AGENT], "test"))


def test_the_tracks_take_turns_in_frames_of_20_ms():
    dialogue = dialogue_of([CALLER, AGENT], "test")
    inbound = [b64decode(f) for f in dialogue.inbound]
    outbound = [b64decode(f) for f in dialogue.outbound]
    assert len(inbound) == len(outbound)
    assert {len(f) for f in inbound + outbound} == {FRAME_BYTES}
    # While the caller speaks the agent's track is silent, and the other way round.
    assert b"".join(inbound).startswith(CALLER)
    assert set(b"".join(outbound)[: len(CALLER)]) == {0xFF}
    assert AGENT in b"".join(outbound)


def test_start_names_the_call_and_both_tracks():
    start = orjson.loads(make_call().start())
    assert start["event"] == "start"
    assert start["sequenceNumber"] == "1"
    assert start["start"]["callSid"] == "rc-test-1"
    assert start["start"]["tracks"] == ["inbound", "outbound"]
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-mulaw",
        "sampleRate": 8000,
        "channels": 1,
    }


def test_sequence_counts_both_tracks_and_chunk_and_timestamp_count_each():
    call = make_call(ticks=30)
    media = [orjson.loads(m) for tick in range(call.ticks) for m in call.media(tick)]
    assert [int(m["sequenceNumber"]) for m in media] == list(range(2, 2 + 2 * call.ticks))
    for track in ("inbound", "outbound"):
        mine = [m["media"] for m in media if m["media"]["track"] == track]
        assert [int(m["chunk"]) for m in mine] == list(range(1, call.ticks + 1))
        assert [int(m["timestamp"]) for m in mine] == list(range(0, 20 * call.ticks, 20))
        assert all(len(b64decode(m["payload"])) == FRAME_BYTES for m in mine)
    stop = orjson.loads(call.stop())
    assert stop["event"] == "stop"
    assert int(stop["sequenceNumber"]) == 2 + 2 * call.ticks


def test_a_tracks_audio_is_what_its_frames_carried_looped():
    call = make_call(ticks=30)  # longer than the dialogue: it loops
    for i, track in enumerate(("inbound", "outbound")):
        sent = b"".join(
            b64decode(orjson.loads(m)["media"]["payload"])
            for tick in range(call.ticks)
            for m in call.media(tick)
            if orjson.loads(m)["media"]["track"] == track
        )
        assert call.track_audio(i) == sent


def test_stored_ticks_reads_per_track_counters_or_halves_one_sequence():
    two = {"packets_received": 21, "tracks": {"inbound": {"packets_received": 11},
                                              "outbound": {"packets_received": 10}}}  # fmt: skip
    assert stored_ticks(two) == 10
    assert received_of(two) == {"inbound": 11, "outbound": 10}
    one = {"packets_received": 21}
    assert stored_ticks(one) == 10
    assert received_of(one) == {"both": 21}


def test_a_wav_body_is_read_by_its_chunks():
    pcm = bytes(range(8)) * 4
    channels, rate, bits, data = _wav(wav_header(len(pcm), 8000, channels=2) + pcm)
    assert (channels, rate, bits, data) == (2, 8000, 16, pcm)


def test_flatness_compares_the_halves_after_the_warm_up():
    # Flat but for the warm-up, then a sawtooth (a tail that grows and is flushed).
    series = [
        {"t_s": float(t), "rss": 50.0 if t < 25 else 100.0 + (t % 20)} for t in range(0, 101, 5)
    ]
    flat = flatness(series, "rss")
    assert flat["warm_up_s"] == 25
    assert flat["first_half_mean"] == 107.5  # t 25..60: 105 110 115 100 105 110 115 100
    assert flat["second_half_mean"] == 107.5  # t 65..100: 105 110 115 100 105 110 115 100
    assert flat["growth_pct"] == 0
    assert flat["peak"] == 115


def test_the_quick_plan_stays_short():
    calls_s = QUICK.long_s + QUICK.fast_s + len(QUICK.ramp) * QUICK.ramp_s + QUICK.soak_s
    assert calls_s <= 45
