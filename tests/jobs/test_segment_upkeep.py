"""What keeps a live call's segments and transcripts moving, against real Redis, PostgreSQL and
arq's queue: the reaper asks again for a segment flush that was asked for and never done, and the
job it queues stores the segment; a live
window that left speech after its last pause queues one follow-up flush (which, with segments of
at most FOLLOW_UP_FROM_SEGMENT_S, stores only a stream gone quiet); a live transcription
pass leaves the call to a pass already running; the media WebSocket stores frames that come
within its hold in one script call."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from typing import Any

import pytest
from arq.constants import job_key_prefix
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import connect

from db.intake import CallIntake, Segmenting
from db.keys import call_keys
from db.leases import TranscriptionLock
from db.packets import NewPacket
from jobs import segments
from jobs.queue import SEGMENT_JOB_PREFIX
from jobs.resources import WorkerResources
from jobs.segments import FOLLOW_UP_FROM_SEGMENT_S, flush_segment
from jobs.sweep import recover_orphaned_calls
from jobs.transcription import live_pass, transcribe_live
from service.app import create_app
from settings import Settings
from tests.conftest import FEED
from tests.factories import scalar
from tests.fakes import ScriptedAI
from tests.service.test_recording import FRAME, speech
from tests.service.test_transcripts import paused
from tests.serving import serving

MEDIA = {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}


def frames_of(audio: bytes) -> list[NewPacket]:
    return [
        NewPacket(n, n * 0.02, base64.b64encode(audio[i : i + FRAME]).decode())
        for n, i in enumerate(range(0, len(audio), FRAME))
    ]


async def segment_jobs(queue: Redis, kind: str = "") -> list[str]:
    found = await queue.keys(f"{job_key_prefix}{SEGMENT_JOB_PREFIX}{kind}*")
    return sorted(k.decode() for k in found)


async def test_the_reaper_asks_again_for_a_segment_flush_that_was_never_done_and_it_runs(
    worker_resources: WorkerResources, redis: Redis, queue: Redis, engine: AsyncEngine, run_worker
):
    intake = CallIntake(redis, feed=FEED, segmenting=Segmenting(5, 30.0))
    appended = await intake.append("lost-segment", [NewPacket(n, n, "w") for n in range(5)])
    assert appended.segment_asked == 1  # its enqueue is what got lost: nothing was queued
    index = call_keys("lost-segment").shard.segments
    await redis.zadd(index, {"lost-segment": 1.0})  # asked for long ago
    assert await segment_jobs(queue) == []

    await recover_orphaned_calls(worker_resources)
    assert len(await segment_jobs(queue, "1.1:")) == 1  # segment 1, asked again once
    await run_worker()

    stored = "SELECT coalesce(sum(packets), 0) FROM call_segment WHERE call_id = 'lost-segment'"
    assert await scalar(engine, stored) == 5
    assert await redis.xlen(call_keys("lost-segment").packets) == 0
    assert await redis.zscore(index, "lost-segment") is None  # not asked again


async def test_a_live_window_that_left_speech_after_its_last_pause_queues_one_follow_up(
    settings: Settings, worker_resources: WorkerResources, queue: Redis
):
    res = worker_resources
    await res.ingestion.open_call("carry", MEDIA)
    # 4 s of speech with a breath each second, cut in the middle of a word: a pause, then more.
    audio = paused(speech(["positive-1", "negative-1"], 4.0))[: int(3.7 * 8000)]
    await res.ingestion.append("carry", frames_of(audio[: len(audio) // FRAME * FRAME]))

    await flush_segment(res, "carry")  # stores the segment and queues its live pass
    await live_pass(res, "carry")

    assert len(await segment_jobs(queue, "follow.")) == 1
    await flush_segment(res, "carry", follow_up=True)
    await live_pass(res, "carry", follow_up=True)  # a follow-up's pass queues no other
    assert len(await segment_jobs(queue, "follow.")) == 1


async def test_with_short_segments_a_follow_up_flushes_only_a_stream_that_went_quiet(
    settings: Settings,
    worker_resources: WorkerResources,
    queue: Redis,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
):
    short = settings.model_copy(update={"segment_seconds": FOLLOW_UP_FROM_SEGMENT_S})
    res = replace(worker_resources, settings=short)
    monkeypatch.setattr(segments, "QUIET_MS", 300)
    await res.ingestion.open_call("short", MEDIA)
    audio = paused(speech(["positive-1", "negative-1"], 4.0))[: int(3.7 * 8000)]
    await res.ingestion.append("short", frames_of(audio[: len(audio) // FRAME * FRAME]))

    await flush_segment(res, "short")
    ready = await live_pass(res, "short")
    assert ready.stored == 1
    assert ready.pending  # speech after the last pause waits
    assert len(await segment_jobs(queue, "follow.")) == 1

    # While the stream flows, the next segment brings it: the follow-up stores nothing.
    more = [NewPacket(1000 + n, 4.0 + n * 0.02, base64.b64encode(b"\xff" * FRAME).decode())
            for n in range(10)]  # fmt: skip
    await res.ingestion.append("short", more)
    assert (await flush_segment(res, "short", follow_up=True)).segments == 0
    assert await redis.xlen(call_keys("short").packets) == 10

    # A stream gone quiet (a paused feed): the follow-up stores its tail for a pass.
    await asyncio.sleep(0.4)
    assert (await flush_segment(res, "short", follow_up=True)).segments == 1
    assert await redis.xlen(call_keys("short").packets) == 0
    # Stopped at a segment's end, its tail empty: quiet too, so a follow-up's pass still runs.
    assert await segments._follow_up_due(res, "short")


async def test_a_live_pass_leaves_the_call_to_a_pass_already_running(
    worker_resources: WorkerResources, ai: ScriptedAI
):
    res = worker_resources
    await res.ingestion.open_call("busy", MEDIA)
    await res.ingestion.append("busy", frames_of(paused(speech(["positive-1"], 4.0))))
    await flush_segment(res, "busy")
    await live_pass(res, "busy")
    transcribed = ai.count("transcription")
    lock = TranscriptionLock(res.redis)
    more = paused(speech(["negative-1"], 4.0))
    await res.ingestion.append(
        "busy", [NewPacket(200 + p.sequence, p.timestamp, p.data) for p in frames_of(more)]
    )
    assert await lock.take("busy", "another pass", 30)

    await flush_segment(res, "busy", follow_up=True)  # stores the new audio's segment only
    assert (await transcribe_live(res, "busy", MEDIA)).stored == 0
    assert ai.count("transcription") == transcribed
    await lock.drop("busy", "another pass")
    assert (await transcribe_live(res, "busy", MEDIA)).stored >= 1


async def test_media_frames_within_the_hold_share_one_script_call(settings: Settings, redis: Redis):
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "start": {"callSid": "held", "tracks": ["inbound"], "mediaFormat": MEDIA["mediaFormat"]},
    }
    payload = base64.b64encode(bytes([0xFF]) * FRAME).decode()

    def media(n: int) -> str:
        body: dict[str, Any] = {"track": "inbound", "timestamp": str(n * 20), "payload": payload}
        return json.dumps({"event": "media", "sequenceNumber": str(n + 2), "media": body})

    async with serving(create_app(settings)) as api, connect(f"ws://{api}/v1/call/media") as ws:
        await ws.send(json.dumps(start))
        await asyncio.sleep(0.2)
        await redis.config_resetstat()
        # Six messages back to back: within one hold window (HOLD_S), or two if one ends
        # meanwhile. (Sent 10 ms apart they spanned three windows when the machine was loaded.)
        for n in range(6):
            await ws.send(media(n))
        await asyncio.sleep(0.3)
        stored = await redis.xlen(call_keys("held").packets)
        calls = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)

    assert stored == 6
    assert calls <= 2  # stored alone, each would have been a script call of its own
