"""Real calls end to end, against a real uvicorn, Redis, PostgreSQL and arq worker: minutes of
two-track speech (the shipped recordings, 8 kHz μ-law, 20 ms frames) over the media WebSocket,
flushed in segments while they go on, played back as a stereo WAV with exact byte ranges; a late
packet of a flushed segment lands in its place; a flush that dies before its commit or between
its commit and its trim loses and doubles nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import connect

from core.audio import TELEPHONY, decode, mulaw_encode
from db.flush import FlushSource
from db.keys import call_keys
from db.packets import NewPacket, Track
from jobs.resources import make_resources
from jobs.segments import flush_segment
from service.app import create_app
from settings import Settings
from tests.conftest import drain_queue, make_settings
from tests.serving import serving, worker_running

RECORDINGS = Path(__file__).parents[2] / "simulate" / "recordings"
FRAME = 160  # 20 ms of 8 kHz μ-law


def speech(names: list[str], seconds: float) -> bytes:
    """Real speech: the shipped recordings one after another, 300 ms apart, for `seconds`."""
    pause = mulaw_encode(np.zeros(2400, dtype=np.int16))
    one_round = b"".join((RECORDINGS / f"{name}.ulaw").read_bytes() + pause for name in names)
    wanted = int(seconds * 8000) // FRAME * FRAME
    return (one_round * (wanted // len(one_round) + 1))[:wanted]


def frames_of(audio: bytes) -> list[str]:
    return [base64.b64encode(audio[i : i + FRAME]).decode() for i in range(0, len(audio), FRAME)]


def two_track_stream(call_id: str, caller: bytes, agent: bytes) -> list[str]:
    """Twilio both_tracks: sequenceNumber counts every message, chunk and timestamp each track."""
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": "MZ2",
        "start": {
            "callSid": call_id,
            "streamSid": "MZ2",
            "tracks": ["inbound", "outbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {},
        },
    }
    messages, number = [json.dumps(start)], 1
    for chunk, (mine, theirs) in enumerate(
        zip(frames_of(caller), frames_of(agent), strict=True), start=1
    ):
        for track, payload in (("inbound", mine), ("outbound", theirs)):
            number += 1
            media = {"track": track, "chunk": str(chunk), "timestamp": str((chunk - 1) * 20),
                     "payload": payload}  # fmt: skip
            messages.append(
                json.dumps(
                    {
                        "event": "media",
                        "sequenceNumber": str(number),
                        "streamSid": "MZ2",
                        "media": media,
                    }
                )
            )
    messages.append(json.dumps({"event": "stop", "sequenceNumber": str(number + 1)}))
    return messages


@pytest.fixture
def segmented(server_urls: tuple[str, str]) -> Settings:
    db_url, redis_url = server_urls
    return make_settings(db_url, redis_url, segment_seconds=5.0)


@pytest.fixture
async def api(segmented: Settings) -> AsyncIterator[str]:
    async with serving(create_app(segmented)) as address:
        yield address


async def wait_state(http: httpx.AsyncClient, call_id: str, state: str, limit_s: float) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        body = (await http.get(f"/v1/calls/{call_id}")).json()
        if body.get("state") == state or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)


async def test_a_two_track_call_of_real_speech_is_flushed_as_it_goes_and_plays_back_in_stereo(
    api: str, segmented: Settings, redis: Redis, engine: AsyncEngine
):
    seconds = 120.0  # two minutes a party: 12,000 media frames
    caller = speech(["positive-1", "negative-1", "neutral-1"], seconds)
    agent = speech(["neutral-2", "positive-2", "negative-2"], seconds)
    messages = two_track_stream("CA-REAL", caller, agent)
    tail: list[int] = []

    async with worker_running(segmented), httpx.AsyncClient(base_url=f"http://{api}") as http:
        async with connect(f"ws://{api}/v1/call/media") as ws:
            await ws.send(messages[0])
            for at in range(1, len(messages) - 1, 100):  # a second of both tracks, 20x real time
                for message in messages[at : at + 100]:
                    await ws.send(message)
                await asyncio.sleep(0.05)
                tail.append(int(await redis.xlen(call_keys("CA-REAL").packets)))
            await ws.send(messages[-1])
            await ws.wait_closed()
        status = await wait_state(http, "CA-REAL", "ARCHIVED", 60)

        wav = await http.get("/v1/calls/CA-REAL/audio")
        part = await http.get("/v1/calls/CA-REAL/audio", headers={"Range": "bytes=1000-60999"})
        suffix = await http.get("/v1/calls/CA-REAL/audio", headers={"Range": "bytes=-10"})
        outside = await http.get("/v1/calls/CA-REAL/audio", headers={"Range": "bytes=99999999-"})
        same = await http.get(
            "/v1/calls/CA-REAL/audio", headers={"If-None-Match": wav.headers["etag"]}
        )

    assert status["state"] == "ARCHIVED", status
    frames = len(caller) // FRAME
    assert status["packets_received"] == 2 * frames
    for track in ("inbound", "outbound"):
        counters = status["tracks"][track]
        assert (counters["packets_received"], counters["missing_count"]) == (frames, 0)
        assert (counters["first_sequence"], counters["last_sequence"]) == (1, frames)
    # The mock cannot understand audio: a short line a window, never the audio's base64.
    assert status["transcript"].startswith("[")
    assert "s of audio]" in status["transcript"]
    assert len(status["transcript"]) < 2000
    # Redis was a buffer: the tail stayed within a few segments (5 s = 500 frames), never the
    # call; after ARCHIVED nothing the call sent is left.
    assert max(tail) < 1500, tail
    assert await redis.exists(call_keys("CA-REAL").packets, call_keys("CA-REAL").runs) == 0
    async with engine.connect() as conn:
        segments, stored = (
            await conn.execute(
                text(
                    "SELECT count(DISTINCT segment), sum(octet_length(payload))"
                    " FROM call_segment WHERE call_id = 'CA-REAL'"
                )
            )
        ).one()
    assert segments >= 10  # flushed while the call went on
    assert stored == len(caller) + len(agent)  # the audio once, decoded from base64

    assert wav.status_code == 200
    assert wav.headers["content-type"] == "audio/wav"
    assert wav.headers["accept-ranges"] == "bytes"
    body = wav.content
    assert int(wav.headers["content-length"]) == len(body) == 44 + frames * FRAME * 2 * 2
    channels, rate = np.frombuffer(body[22:24], "<u2")[0], np.frombuffer(body[24:28], "<u4")[0]
    assert (channels, rate) == (2, 8000)
    pcm = np.frombuffer(body[44:], "<i2").reshape(-1, 2)
    assert np.array_equal(pcm[:, 0], decode(caller, TELEPHONY))  # left: the caller
    assert np.array_equal(pcm[:, 1], decode(agent, TELEPHONY))  # right: the agent

    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 1000-60999/{len(body)}"
    assert part.content == body[1000:61000]
    assert (suffix.status_code, suffix.content) == (206, body[-10:])
    assert outside.status_code == 416
    assert outside.headers["content-type"] == "application/problem+json"
    assert same.status_code == 304


async def test_a_late_packet_of_a_flushed_segment_is_in_the_recording_in_its_place(
    api: str, segmented: Settings, redis: Redis
):
    levels = {s: 500 + 100 * s for s in range(40)}

    def packet(s: int) -> dict[str, Any]:
        audio = mulaw_encode(np.full(FRAME, levels[s], dtype=np.int16))
        return {
            "sequence": s,
            "timestamp": 1e9 + s * 0.02,
            "data": base64.b64encode(audio).decode(),
        }

    res = make_resources(segmented)
    try:
        async with httpx.AsyncClient(base_url=f"http://{api}") as http:
            batch = {"packets": [packet(s) for s in range(40) if s != 7]}
            assert (await http.post("/v1/call/stream/late/batch", json=batch)).status_code == 202
            await flush_segment(res, "late")  # its segment is in PostgreSQL, Redis is empty
            assert await redis.xlen(call_keys("late").packets) == 0
            answer = await http.post("/v1/call/stream/late", json=packet(7))
            assert answer.json()["warnings"][0]["type"] == "out_of_order"
            await http.post("/v1/call/complete/late")
            await drain_queue(res)
            wav = (await http.get("/v1/calls/late/audio")).content
    finally:
        await res.close()

    pcm = np.frombuffer(wav[44:], "<i2").reshape(40, FRAME)
    expected = decode(mulaw_encode(np.array(list(levels.values()), dtype=np.int16)), TELEPHONY)
    assert pcm[:, 0].tolist() == expected.tolist()


class Died(Exception):
    """The worker died here."""


async def stored_sequences(engine: AsyncEngine, call_id: str) -> list[int]:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT unnest(sequences) FROM call_segment WHERE call_id = :c ORDER BY 1"),
            {"c": call_id},
        )
        return [int(s) for (s,) in found]


async def test_a_flush_that_dies_before_its_commit_or_before_its_trim_loses_and_doubles_nothing(
    segmented: Settings, engine: AsyncEngine, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    res = make_resources(segmented)
    intake = res.ingestion.intake
    try:
        await intake.append("crash", [NewPacket(s, float(s), f"w{s}") for s in range(30)])

        # Between the commit and the trim: PostgreSQL has the segment, Redis still the entries.
        async def died(*_: Any) -> int:
            raise Died

        with monkeypatch.context() as patch:
            patch.setattr(FlushSource, "segment_done", died)
            with pytest.raises(Died):
                await flush_segment(res, "crash")
        assert await redis.xlen(call_keys("crash").packets) == 30
        await intake.append("crash", [NewPacket(s, float(s), f"w{s}") for s in range(30, 40)])
        await intake.append("crash", [NewPacket(1, 1.0, "agent", Track.OUTBOUND)])

        # Before the commit: the transaction rolls back, the entries stay for the next round.
        with monkeypatch.context() as patch:
            patch.setattr("jobs.segments.build_rows", lambda *_: (_ for _ in ()).throw(Died()))
            with pytest.raises(Died):
                await flush_segment(res, "crash")

        flushed = await flush_segment(res, "crash")
    finally:
        await res.close()

    assert flushed.packets == 11  # what the dead rounds left: stored once, nothing before again
    assert await redis.xlen(call_keys("crash").packets) == 0
    assert await stored_sequences(engine, "crash") == sorted([*range(40), 1])
