"""Transcripts people can read, against a real uvicorn, Redis, PostgreSQL and arq worker: a
two-party call of real speech streamed at real-time pace shows both speakers' utterances on the
live feed before it ends; the windows a call is transcribed in cover each track once, cut at
quiet frames; the transcript endpoint gives the utterances by speaker and, once ARCHIVED, the
conversation's figures."""

from __future__ import annotations

import asyncio
import base64
import time
from itertools import pairwise
from typing import Any

import httpx
import numpy as np
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import connect

from core.audio import TELEPHONY, decode
from db import calls
from db.events import EventLog
from db.packets import NewPacket
from jobs.ai import PermanentAIError
from jobs.process import process_call
from jobs.resources import make_resources
from jobs.segments import flush_segment
from jobs.transcription import live_pass
from service.app import create_app
from settings import Settings
from tests.conftest import FEED, make_settings
from tests.fakes import ScriptedAI
from tests.service.test_recording import FRAME, speech, two_track_stream, wait_state
from tests.serving import serving, worker_running


def paused(audio: bytes) -> bytes:
    """Speech with a 100 ms pause every second, as people take breath: somewhere to cut."""
    frames = [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]
    silent = bytes([0xFF]) * FRAME  # μ-law's zero
    return b"".join(silent if n % 50 >= 45 else f for n, f in enumerate(frames))


@pytest.fixture
def live(server_urls: tuple[str, str]) -> Settings:
    db_url, redis_url = server_urls
    return make_settings(db_url, redis_url, segment_seconds=2.0)


async def test_both_speakers_utterances_reach_the_feed_while_the_call_is_still_talking(
    live: Settings, redis: Redis, engine: AsyncEngine
):
    seconds = 8.0
    caller = paused(speech(["positive-1", "negative-1"], seconds))
    agent = paused(speech(["neutral-2", "positive-2"], seconds))
    messages = two_track_stream("CA-LIVE", caller, agent)
    seen: list[dict[str, Any]] = []

    async with serving(create_app(live)) as api, worker_running(live):
        async with connect(f"ws://{api}/v1/call/media") as ws:
            await ws.send(messages[0])
            started = time.monotonic()
            for n, message in enumerate(messages[1:-1]):
                await ws.send(message)
                if n % 2:  # both tracks' frames of one 20 ms: the real-time pace
                    await asyncio.sleep(max(0.0, started + (n + 1) / 100 - time.monotonic()))
            # Before the stop: what the feed has told of the call so far.
            seen = [
                e.body
                for e in await EventLog(redis, FEED).after("0-0", 10_000)
                if e.call_id == "CA-LIVE" and e.type == "utterance"
            ]
            await ws.send(messages[-1])
        async with httpx.AsyncClient(base_url=f"http://{api}") as http:
            status = await wait_state(http, "CA-LIVE", "ARCHIVED", 30)
            transcript = (await http.get("/v1/calls/CA-LIVE/transcript")).json()

    assert {e["speaker"] for e in seen} == {"caller", "agent"}, seen
    assert all(e["state"] == "IN_PROGRESS" for e in seen)
    assert status["state"] == "ARCHIVED"
    said = transcript["utterances"]
    assert {u["speaker"] for u in said} == {"caller", "agent"}
    assert [u["start_s"] for u in said] == sorted(u["start_s"] for u in said)
    # Audio is transcribed once: the live windows are kept, the end adds only what was left.
    async with engine.connect() as conn:
        windows = (
            await conn.execute(
                text(
                    "SELECT track, start_sample, end_sample FROM transcript_window"
                    " WHERE call_id = 'CA-LIVE' ORDER BY track, start_sample"
                )
            )
        ).all()
    for track in (0, 1):
        spans = [(s, e) for t, s, e in windows if t == track]
        assert spans[0][0] == 0
        assert all(a[1] == b[0] for a, b in pairwise(spans))  # no gap
        assert spans[-1][1] == len(caller)  # to the end, once
        assert len(spans) >= 2  # live windows, then the last
        # Each live cut is in a pause: the frames around it are quiet next to the speech (the
        # fading end of a word counts as quiet, as jobs/transcription.py's pause_cut has it;
        # where the stored tail ends, and so which frames are searched, depends on timing).
        audio = decode(caller if track == 0 else agent, TELEPHONY).astype(np.float64)
        frames = audio[: len(audio) // FRAME * FRAME].reshape(-1, FRAME)
        loudness = np.sqrt((frames * frames).mean(axis=1))
        speech_rms = float(np.median(loudness[loudness > 0]))
        for _, end in spans[:-1]:
            around = audio[end - FRAME : end + FRAME]
            assert np.sqrt((around * around).mean()) <= 0.1 * speech_rms, end
    figures = transcript["conversation"]
    assert set(figures["speakers"]) == {"caller", "agent"}
    for name in ("caller", "agent"):
        assert 0 < figures["speakers"][name]["talk_s"] <= seconds + 0.1
    assert figures["overlap_count"] >= 1  # both parties talk over each other in this call
    assert status["conversation"] == figures


async def test_a_call_of_text_packets_has_one_utterance_a_speaker_and_its_figures(
    live: Settings,
):
    said = [
        ("hello thanks for calling", "inbound"),
        ("happy to help", "outbound"),
        ("the problem is resolved great", "inbound"),
    ]
    async with (
        serving(create_app(live)) as api,
        worker_running(live),
        httpx.AsyncClient(base_url=f"http://{api}") as http,
    ):
        for n, (words, track) in enumerate(said):
            packet = {"sequence": n, "timestamp": 1e9 + n, "data": words, "track": track}
            assert (await http.post("/v1/call/stream/txt", json=packet)).status_code == 202
        await http.post("/v1/call/complete/txt")
        status = await wait_state(http, "txt", "ARCHIVED", 30)
        transcript = (await http.get("/v1/calls/txt/transcript")).json()
        missing = await http.get("/v1/calls/nobody/transcript")

    assert status["tracks"]["inbound"]["packets_received"] == 2
    assert status["tracks"]["outbound"]["packets_received"] == 1
    by_speaker = {u["speaker"]: u["text"] for u in transcript["utterances"]}
    assert by_speaker == {
        "caller": "hello thanks for calling the problem is resolved great",
        "agent": "happy to help",
    }
    caller = transcript["conversation"]["speakers"]["caller"]
    assert caller["sentiment"]["label"] == "positive"
    assert transcript["sentiment"]["label"] == "positive"
    assert missing.status_code == 404


async def test_a_window_that_cannot_be_transcribed_fails_the_call_naming_it_and_a_replay_redoes_it(
    live: Settings, redis: Redis
):
    ai = ScriptedAI()
    res = make_resources(live, ai=ai)
    media = {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
    caller = paused(speech(["positive-1", "negative-1"], 8.0))
    frames = [caller[i : i + FRAME] for i in range(0, len(caller), FRAME)]

    def packets(first: int, last: int) -> list[NewPacket]:
        return [
            NewPacket(n, n * 0.02, base64.b64encode(frames[n]).decode()) for n in range(first, last)
        ]

    try:
        await res.ingestion.open_call("flaky", media)
        await res.ingestion.append("flaky", packets(0, 200))  # 4 s: a live window
        await flush_segment(res, "flaky")
        await live_pass(res, "flaky")
        assert ai.count("transcription") == 1
        await res.ingestion.append("flaky", packets(200, len(frames)))
        await res.ingestion.complete("flaky")
        ai.fail("transcription", PermanentAIError("400: the audio is too short"))
        assert await process_call(res, "flaky") == "FAILED"
        async with res.sessions() as session:
            failed = await calls.get_call(session, "flaky")
        assert failed is not None
        assert failed.last_error is not None
        # The reason names the party and the stretch of the call that could not be done.
        assert "400: the audio is too short" in failed.last_error
        assert "the caller's audio at " in failed.last_error

        before = ai.count("transcription")
        async with res.sessions() as session, session.begin():
            assert await calls.replay_failed(session, "flaky")  # what POST .../retry does
        assert await process_call(res, "flaky") == "ARCHIVED"
    finally:
        await res.close()

    assert ai.count("transcription") == before + 1  # only the window that had failed
