"""A recording is bounded and never a 500, and reads hold bounded memory (issue 22), against a
real uvicorn, Redis, PostgreSQL and arq worker: packets whose sequences are far apart make a
short valid recording, sparse packets make no hours of silence, an absurd or backward Range is
ignored, a 416 says the file's size; and a read of a two-track hour, of a call whose rows are
text, and a 2-byte Range of a call of 48 KB packets each hold a few MB at most."""

from __future__ import annotations

import base64
import io
import logging
import time
import tracemalloc
import wave
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.audio import TELEPHONY, decode, mulaw_encode
from core.recording import Recording
from db.packets import NewPacket, StoredPacket
from db.segments import TEXT, SegmentReader, SegmentRow, plan_segment, store_segment
from jobs.audio import TrackAudio
from jobs.resources import make_resources
from jobs.segments import SEGMENT_BYTES
from service.app import create_app
from settings import Settings
from tests.conftest import drain_queue, make_settings
from tests.factories import rows
from tests.serving import serving

MULAW = str(TELEPHONY)
log = logging.getLogger(__name__)
FOUR_HOURS = 4 * 3600.0


@pytest.fixture
def bounded(server_urls: tuple[str, str]) -> Settings:
    """A call may last 30 s here, so that reaching the bound is quick to show."""
    db_url, redis_url = server_urls
    return make_settings(db_url, redis_url, max_call_seconds=30.0)


@pytest.fixture
async def api(bounded: Settings) -> AsyncIterator[str]:
    async with serving(create_app(bounded)) as address:
        yield address


def tone(samples: int, level: int = 3000) -> bytes:
    return mulaw_encode(np.full(samples, level, dtype=np.int16))


async def send_and_archive(
    settings: Settings, http: httpx.AsyncClient, call_id: str, packets: list[dict[str, Any]]
) -> None:
    for at in range(0, len(packets), 500):
        answer = await http.post(
            f"/v1/call/stream/{call_id}/batch", json={"packets": packets[at : at + 500]}
        )
        assert answer.status_code == 202, answer.text
    assert (await http.post(f"/v1/call/complete/{call_id}")).status_code in (200, 202)
    res = make_resources(settings)
    try:
        await drain_queue(res)
    finally:
        await res.close()


async def test_two_packets_whose_sequences_are_far_apart_make_a_short_valid_recording(
    api: str, bounded: Settings
):
    # Today's finding: the gap's silence wrapped int64 and made every read of the call a 500.
    audio = tone(48_000)
    data = base64.b64encode(audio).decode()
    now = time.time()
    packets = [
        {"sequence": 0, "timestamp": now, "data": data},
        {"sequence": 192153584101143, "timestamp": now + 0.01, "data": data},
    ]
    async with httpx.AsyncClient(base_url=f"http://{api}") as http:
        await send_and_archive(bounded, http, "far-apart", packets)
        status = (await http.get("/v1/calls/far-apart")).json()
        whole = await http.get("/v1/calls/far-apart/audio")
        head = await http.head("/v1/calls/far-apart/audio")

    assert status["state"] == "ARCHIVED", status
    assert whole.status_code == head.status_code == 200
    with wave.open(io.BytesIO(whole.content)) as reader:
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
    # Neither clock says any time passed between them: no silence is put in.
    assert np.array_equal(pcm, np.concatenate([decode(audio, TELEPHONY)] * 2))
    assert int(head.headers["content-length"]) == len(whole.content) == 44 + 2 * 96_000


async def test_sparse_packets_make_no_more_silence_than_their_clocks_or_the_calls_bound_allow(
    api: str, bounded: Settings
):
    frame = base64.b64encode(tone(160)).decode()
    now = time.time()
    # 200 frames, each 2,999 frames (60 s) after the last, sent at once with one timestamp:
    # neither the sender's clock nor the arrivals say that any time passed.
    burst = [{"sequence": s * 3000, "timestamp": now, "data": frame} for s in range(200)]
    # The same, the timestamps saying 60 s between them: no silence past the bound (30 s here).
    claimed = [
        {"sequence": s * 3000, "timestamp": now + s * 60.0, "data": frame} for s in range(200)
    ]
    async with httpx.AsyncClient(base_url=f"http://{api}") as http:
        await send_and_archive(bounded, http, "sparse-burst", burst)
        burst_head = await http.head("/v1/calls/sparse-burst/audio")
        await send_and_archive(bounded, http, "sparse-claimed", claimed)
        claimed_wav = await http.get("/v1/calls/sparse-claimed/audio")

    assert burst_head.status_code == 200
    assert int(burst_head.headers["content-length"]) == 44 + 200 * 160 * 2  # 4 s, no silence
    assert claimed_wav.status_code == 200
    with wave.open(io.BytesIO(claimed_wav.content)) as reader:
        frames = reader.getnframes()
        pcm = np.frombuffer(reader.readframes(frames), "<i2")
    # The first gap fills the track to 30 s, the other 199 frames follow: not 3.3 hours.
    assert frames == 30 * 8000 + 199 * 160
    assert np.count_nonzero(pcm) == 200 * 160  # every frame is in it


async def test_an_absurd_or_backward_range_is_ignored_and_a_416_says_the_files_size(
    api: str, bounded: Settings
):
    now = time.time()
    packets = [
        {"sequence": s, "timestamp": now + s * 0.02, "data": base64.b64encode(tone(160)).decode()}
        for s in range(10)
    ]
    async with httpx.AsyncClient(base_url=f"http://{api}") as http:
        await send_and_archive(bounded, http, "ranges", packets)
        url = "/v1/calls/ranges/audio"
        whole = await http.get(url)
        absurd = await http.get(url, headers={"Range": f"bytes={'9' * 5000}-"})
        absurd_end = await http.get(url, headers={"Range": f"bytes=0-{'9' * 5000}"})
        backward = await http.get(url, headers={"Range": "bytes=100-50"})
        outside = await http.get(url, headers={"Range": "bytes=99999-"})
        empty_suffix = await http.head(url, headers={"Range": "bytes=-0"})
        good = await http.get(url, headers={"Range": "bytes=44-45"})

    size = 44 + 10 * 160 * 2
    assert (whole.status_code, len(whole.content)) == (200, size)
    for ignored in (absurd, absurd_end, backward):
        assert (ignored.status_code, ignored.content) == (200, whole.content)
        assert "content-range" not in ignored.headers
    assert outside.status_code == empty_suffix.status_code == 416
    assert outside.headers["content-range"] == empty_suffix.headers["content-range"]
    assert outside.headers["content-range"] == f"bytes */{size}"
    assert outside.headers["content-type"] == "application/problem+json"
    assert outside.json()["code"] == "range_not_satisfiable"
    assert f"the file is {size} bytes" in outside.json()["detail"]
    assert (good.status_code, good.content) == (206, whole.content[44:46])


# Reads in bounded memory: rows built directly (as the flush builds them) into the suite's
# PostgreSQL, then read back through the same SegmentReader the API and the worker use.


async def store_rows(engine: AsyncEngine, call_id: str, segments: list[list[SegmentRow]]) -> None:
    for n, segment in enumerate(segments):
        marker = StoredPacket(0, 0.0, "", 0.0, 0, (n + 1, 0))

        def built(_: list[StoredPacket], rows: list[SegmentRow] = segment) -> list[SegmentRow]:
            return rows

        async with engine.begin() as conn:
            await store_segment(conn, call_id, await plan_segment(conn, call_id, [marker], built))


def audio_row(
    track: int, first: int, count: int, packet: bytes, start_s: float, encoding: str = MULAW
) -> SegmentRow:
    seconds = [start_s + i * 0.02 for i in range(count)]
    return SegmentRow(
        track=track,
        encoding=encoding,
        sequences=list(range(first, first + count)),
        sizes=[len(packet)] * count,
        timestamps=seconds,
        arrivals=[1.7e9 + s for s in seconds],
        payload=packet * count,
    )


async def peak_of(read: Any) -> int:
    """The most memory (Python's allocations, tracemalloc) `read()` held at once, in bytes."""
    tracemalloc.start()
    try:
        await read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


async def drain(chunks: AsyncIterator[Any]) -> int:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
    return total


KB = 1024


async def test_every_read_of_a_two_track_hour_holds_a_few_mb_at_most(engine: AsyncEngine):
    # 120 segments of 30 s a track: 1,500 frames of 160 bytes each, 57.6 MB of μ-law in all.
    packet = tone(160)
    await store_rows(
        engine,
        "hour",
        [[audio_row(t, k * 1500, 1500, packet, k * 30.0) for t in (0, 1)] for k in range(120)],
    )
    reader = SegmentReader(async_sessionmaker(engine, expire_on_commit=False), "hour")
    loaded: dict[str, Recording] = {}

    async def head() -> None:
        loaded["r"] = await Recording.load(reader, TELEPHONY, FOUR_HOURS)
        assert loaded["r"].wav_size == 44 + 3600 * 8000 * 4

    async def a_range() -> None:
        recording = await Recording.load(reader, TELEPHONY, FOUR_HOURS)
        middle = recording.wav_size // 2
        assert await drain(recording.wav_bytes(middle, middle + 1)) == 2

    async def ten_minutes() -> None:
        recording = await Recording.load(reader, TELEPHONY, FOUR_HOURS)
        assert await drain(recording.wav_bytes(0, 44 + 600 * 8000 * 4 - 1)) == 44 + 600 * 32000

    async def a_transcription_pass() -> None:
        recording = await Recording.load(reader, TELEPHONY, FOUR_HOURS)
        audio = TrackAudio(recording, 1, 0, recording.lines[1].samples)
        assert await drain(audio.pieces(max_s=30.0, search_s=5.0)) == 3600 * 8000

    await head()  # the pool's first connection, asyncpg's type codecs: once a process
    peaks = {read.__name__: await peak_of(read) for read in (head, a_range, ten_minutes)}
    peaks["a_transcription_pass"] = await peak_of(a_transcription_pass)

    log.info("two-track hour: %s", {name: f"{peak / KB:.0f} KB" for name, peak in peaks.items()})
    # The hour is 57.6 MB of μ-law and 115 MB of PCM; its heads, 240 rows of 1,500 packets,
    # are kept as runs (about 1 KB a row).
    assert peaks["head"] < 1536 * KB, peaks
    assert peaks["a_range"] < 2048 * KB, peaks
    assert peaks["ten_minutes"] < 3072 * KB, peaks
    # A 30 s piece cut at a quiet frame (the local model's), as the provider gets it.
    assert peaks["a_transcription_pass"] < 5120 * KB, peaks


async def test_a_call_whose_rows_are_text_is_measured_a_slice_at_a_time(engine: AsyncEngine):
    # Each segment has one packet "AAAA" (base64 of 3 bytes, too short to be audio over HTTP),
    # so every row is stored as the packets' text: 20 rows of 324 KB of base64.
    text = base64.b64encode(tone(160))
    rows = []
    for k in range(20):
        row = audio_row(0, k * 1500, 1500, text, k * 30.0, TEXT)
        last = row.payload[: -len(text)] + b"AAAA"
        rows.append([SegmentRow(0, TEXT, row.sequences, [*row.sizes[:-1], 4], row.timestamps,
                                row.arrivals, last)])  # fmt: skip
    await store_rows(engine, "texts", rows)
    reader = SegmentReader(async_sessionmaker(engine, expire_on_commit=False), "texts")

    async def head() -> None:
        recording = await Recording.load(reader, TELEPHONY, FOUR_HOURS)
        assert recording.samples == 20 * (1499 * 160 + 3)

    async def whole() -> None:
        recording = await Recording.load(reader, TELEPHONY, FOUR_HOURS)
        assert await drain(recording.wav_bytes(0, recording.wav_size - 1)) == recording.wav_size

    await head()  # the pool's first connection, asyncpg's type codecs: once a process
    peaks = {"head": await peak_of(head), "whole": await peak_of(whole)}

    log.info("text rows (6.5 MB of base64): %s", {k: f"{v / KB:.0f} KB" for k, v in peaks.items()})
    assert peaks["head"] < 1024 * KB, peaks
    assert peaks["whole"] < 2048 * KB, peaks


async def test_a_two_byte_range_of_a_call_of_48_kb_packets_reads_no_whole_row(
    engine: AsyncEngine,
):
    # One row of 500 packets of 48,000 bytes (6 s each): 24 MB.
    await store_rows(engine, "big-packets", [[audio_row(0, 0, 500, tone(48_000), 0.0)]])
    reader = SegmentReader(async_sessionmaker(engine, expire_on_commit=False), "big-packets")

    async def a_range() -> None:
        recording = await Recording.load(reader, TELEPHONY, FOUR_HOURS)
        assert recording.samples == 500 * 48_000
        last = recording.wav_size - 1
        assert await drain(recording.wav_bytes(last - 1, last)) == 2

    await a_range()  # the pool's first connection, asyncpg's type codecs: once a process
    peak = await peak_of(a_range)

    log.info("48 KB packets, a 2-byte Range of a 24 MB row: %.0f KB", peak / KB)
    assert peak < 1024 * KB


async def test_a_flush_of_large_packets_stores_rows_of_bounded_bytes_and_loses_nothing(
    bounded: Settings, engine: AsyncEngine
):
    # 300 packets of 48,000 bytes (64,000 of base64): 19 MB of data, three rounds' worth.
    data = base64.b64encode(tone(48_000)).decode()
    res = make_resources(bounded)
    try:
        for first in range(0, 300, 100):
            packets = [NewPacket(s, s * 6.0, data) for s in range(first, first + 100)]
            await res.ingestion.intake.append("large", packets)
        await res.ingestion.complete("large")
        await drain_queue(res)
    finally:
        await res.close()

    stored = await rows(
        engine,
        "SELECT segment, cardinality(sequences), octet_length(payload) FROM call_segment"
        " WHERE call_id = 'large' ORDER BY segment",
    )
    assert len(stored) >= 3
    assert sum(packets for _, packets, _ in stored) == 300
    assert all(size <= SEGMENT_BYTES * 3 // 4 for _, _, size in stored), stored


async def test_a_call_with_one_short_text_packet_is_served_from_its_text_row(
    api: str, bounded: Settings
):
    # "AAAA" is base64 of 3 bytes: too short to be audio over HTTP, so the row is stored as text;
    # the recording decodes it a slice at a time, the 3 bytes included.
    now = time.time()
    frames = [
        {"sequence": s, "timestamp": now + s * 0.02, "data": base64.b64encode(tone(160)).decode()}
        for s in range(50)
    ]
    frames.append({"sequence": 50, "timestamp": now + 1.0, "data": "AAAA"})
    async with httpx.AsyncClient(base_url=f"http://{api}") as http:
        await send_and_archive(bounded, http, "one-word", frames)
        head = await http.head("/v1/calls/one-word/audio")
        tail = await http.get("/v1/calls/one-word/audio", headers={"Range": "bytes=-6"})
        whole = await http.get("/v1/calls/one-word/audio")

    size = 44 + (50 * 160 + 3) * 2
    assert (head.status_code, int(head.headers["content-length"])) == (200, size)
    assert (tail.status_code, tail.content) == (206, whole.content[-6:])
    assert whole.content[-6:] == decode(b"\x00\x00\x00", TELEPHONY).astype("<i2").tobytes()
