"""Every event the feed tells, end to end, is one its model describes (db/feed_events.py) and
within the bound: calls run through the real ingestion scripts, segment flushes, live and final
transcription, the AI's failures and a replay, on the suite's Redis and PostgreSQL, and every
entry the feed holds afterwards is validated. A call of megabytes of text is told as utterances
of at most the cap, never as one event of megabytes (issue 22)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import numpy as np
import pytest
from redis.asyncio import Redis

from core.audio import mulaw_encode
from db.feed_events import (
    CALL_EVENT,
    MAX_EVENT_BYTES,
    UTTERANCE_MAX_CHARS,
    AttemptEvent,
    CallEvent,
    StateEvent,
    UtteranceEvent,
)
from db.keys import EVENTS
from db.packets import NewPacket, Track
from db.states import CallState
from jobs.ai import PermanentAIError, mock_spoken
from jobs.audio import TrackText
from jobs.process import process_call
from jobs.resources import WorkerResources, make_resources
from jobs.segments import flush_segment
from jobs.transcription import live_pass
from settings import Settings
from tests.fakes import ScriptedAI

FRAME = 160  # samples of one 20 ms frame at 8 kHz
MEDIA = {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
WORDS = "hello thanks for calling the problem is resolved great "


def frame(track: Track, n: int) -> str:
    """20 ms of the track's tone, with a 0.2 s pause every second (a live window is cut there)."""
    t = (np.arange(FRAME) + n * FRAME) / 8000
    loud = 0 if n % 50 >= 40 else 8000
    tone = 440.0 if track is Track.INBOUND else 660.0
    samples = (loud * np.sin(2 * np.pi * tone * t)).astype(np.int16)
    return base64.b64encode(mulaw_encode(samples)).decode()


@pytest.fixture
async def res(settings: Settings, ai: ScriptedAI) -> AsyncIterator[WorkerResources]:
    # Segments of 1 s (each flush transcribes the windows ready), progress on every batch.
    live = settings.model_copy(
        update={"segment_seconds": 1.0, "events_progress_interval_s": 0.000_001}
    )
    resources = make_resources(live, ai=ai)
    yield resources
    await resources.close()


async def told(redis: Redis) -> list[tuple[bytes, CallEvent]]:
    """Every entry of the feed, as stored, and as its model reads it (raising if none does)."""
    entries = await redis.xrange(EVENTS)
    return [(fields[b"e"], CALL_EVENT.validate_json(fields[b"e"])) for _, fields in entries]


async def test_every_event_of_calls_run_end_to_end_is_one_its_model_describes(
    res: WorkerResources, ai: ScriptedAI, redis: Redis
):
    # A call the AI refuses: FAILED with its reason, then replayed.
    ai.fail("transcription", PermanentAIError("audio format not supported"))
    await res.ingestion.append("refused", [NewPacket(0, 0.0, "the line is broken")])
    await res.ingestion.complete("refused")
    assert await process_call(res, "refused") == "FAILED"
    await res.ingestion.intake.mark_replayed("refused")

    # A live two-party audio call: segments stored and windows transcribed as it goes on.
    await res.ingestion.open_call("audio", MEDIA)
    for second in range(3):
        batch = [
            NewPacket(n, n * 0.02, frame(track, n), track)
            for n in range(second * 50, (second + 1) * 50)
            for track in (Track.INBOUND, Track.OUTBOUND)
        ]
        await res.ingestion.append("audio", batch)
        await flush_segment(res, "audio")
        await live_pass(res, "audio")
    await res.ingestion.complete("audio")
    assert await process_call(res, "audio") == "ARCHIVED"

    events = await told(redis)
    for stored, _ in events:
        assert len(stored) + 64 <= MAX_EVENT_BYTES  # with its id, as a reader gets it
    kinds = {(event.type, event.call_id) for _, event in events}
    for kind in ("state", "attempt", "progress", "segment", "utterance"):
        assert (kind, "audio") in kinds, kind
    attempts = [e for _, e in events if isinstance(e, AttemptEvent) and e.call_id == "audio"]
    live = [a for a in attempts if a.live]
    assert live
    assert all(a.state is CallState.IN_PROGRESS for a in live)
    final = [a for a in attempts if not a.live]
    assert final
    assert all(a.state is CallState.PROCESSING_AI for a in final)
    states = [(e.call_id, e.state, e.reason) for _, e in events if isinstance(e, StateEvent)]
    assert ("refused", CallState.FAILED, "transcription failed permanently: audio format "
            "not supported (transcribing the caller's text)") in states  # fmt: skip
    assert ("refused", CallState.COMPLETED, "replay") in states
    assert ("audio", CallState.COMPLETED, "explicit") in states


async def test_megabytes_of_text_are_told_as_utterances_within_the_cap(
    res: WorkerResources, redis: Redis
):
    # Issue 22: 4.2 MB of text packets were one utterance event of 4,200,317 bytes.
    data = (WORDS * 1_100).strip()  # 60 KB a packet, about the largest one may be
    packets = [NewPacket(n, n * 0.02, data) for n in range(8)]
    for n in range(0, len(packets), 2):
        await res.ingestion.append("talker", packets[n : n + 2])
    await res.ingestion.complete("talker")
    assert await process_call(res, "talker") == "ARCHIVED"

    events = await told(redis)
    said = [e for _, e in events if isinstance(e, UtteranceEvent) and e.call_id == "talker"]
    assert len(said) > 1
    assert all(len(u.text) <= UTTERANCE_MAX_CHARS for u in said)
    assert " ".join(u.text for u in said).split() == " ".join([data] * 8).split()
    assert max(len(stored) for stored, _ in events) + 64 <= MAX_EVENT_BYTES


async def test_the_mock_hears_one_utterance_per_caps_worth_of_text():
    text = (WORDS * 80_000).strip()  # 4.4 MB
    spoken = await mock_spoken(TrackText([text], "text packets"))
    assert len(spoken) >= len(text) // UTTERANCE_MAX_CHARS
    assert max(len(s.text) for s in spoken) <= UTTERANCE_MAX_CHARS
    assert " ".join(s.text for s in spoken) == text
