"""A call transcribed live, a window at a time, against the real local model (Whisper tiny.en),
real Redis and PostgreSQL: a two-party call of real speech (the shipped recordings) flushed in
6 s segments and transcribed after each, then finished, hears what the same tracks transcribed
whole hear: the windows' boundaries neither drop nor double words."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from difflib import SequenceMatcher
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from core.audio import TELEPHONY
from core.recording import Recording
from db.packets import NewPacket, StoredPacket, Track
from db.transcripts import utterances
from jobs.ai_local import LocalAI
from jobs.audio import TrackAudio
from jobs.process import process_call
from jobs.resources import make_resources
from jobs.segments import flush_segment
from jobs.transcription import live_pass
from tests.conftest import make_settings
from tests.segments_in_memory import SegmentsInMemory

RECORDINGS = Path(__file__).parents[2] / "simulate" / "recordings"
FRAME = 160
PAUSE = bytes([0xFF]) * 2400  # 300 ms of μ-law silence


SAID = {r["file"].removesuffix(".ulaw"): r["text"] for r in json.loads(
    (RECORDINGS / "manifest.json").read_text())}  # fmt: skip


def spoken(names: list[str]) -> tuple[bytes, str]:
    """The recordings one after another, and what they say."""
    audio = b"".join((RECORDINGS / f"{n}.ulaw").read_bytes() + PAUSE for n in names)
    return audio[: len(audio) // FRAME * FRAME], " ".join(SAID[n] for n in names)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def heard(said: str, transcript: list[str]) -> float:
    """The share of the words said (of more than three letters) the transcript has."""
    wanted = Counter(w for w in words(said) if len(w) > 3)
    return sum((wanted & Counter(transcript)).values()) / sum(wanted.values())


@pytest.fixture(scope="module")
async def local_ai() -> AsyncIterator[LocalAI]:
    ai = LocalAI(processes=1)
    yield ai
    await ai.aclose()


async def whole(ai: LocalAI, audio: bytes, track: int) -> list[str]:
    """The track transcribed at once, as one window."""
    frames = [base64.b64encode(audio[i : i + FRAME]).decode() for i in range(0, len(audio), FRAME)]
    packets = [StoredPacket(n, n * 0.02, f, 0.0, track, (n, 0)) for n, f in enumerate(frames)]
    recording = await Recording.load(SegmentsInMemory.of_packets([packets], TELEPHONY, True),
                                     TELEPHONY, 4 * 3600)  # fmt: skip
    found = await ai.transcribe_segments("whole", TrackAudio(recording, 0, 0, recording.samples))
    return words(" ".join(s.text for s in found))


async def test_live_windows_hear_what_the_whole_track_hears_without_dropped_or_doubled_words(
    server_urls: tuple[str, str], local_ai: LocalAI, engine: AsyncEngine
):
    (caller, caller_said), (agent, agent_said) = (
        spoken(["positive-1", "negative-1", "neutral-1"]),
        spoken(["neutral-2", "positive-2", "negative-2"]),
    )
    settings = make_settings(*server_urls, ai_provider="local", segment_seconds=6.0)
    res = make_resources(settings, ai=local_ai)
    media = {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
    try:
        await res.ingestion.open_call("windows", media)
        frames = max(len(caller), len(agent)) // FRAME
        for start in range(0, frames, 300):  # 6 s of both tracks, then what the job does
            batch = []
            for n in range(start, min(start + 300, frames)):
                for party, audio in ((Track.INBOUND, caller), (Track.OUTBOUND, agent)):
                    if n * FRAME < len(audio):
                        data = base64.b64encode(audio[n * FRAME : (n + 1) * FRAME]).decode()
                        batch.append(NewPacket(n, n * 0.02, data, party))
            await res.ingestion.append("windows", batch)
            await flush_segment(res, "windows")
            await live_pass(res, "windows")
        async with res.sessions() as session:
            live = await utterances(session, "windows")
        await res.ingestion.complete("windows")
        assert await process_call(res, "windows") == "ARCHIVED"
        async with res.sessions() as session:
            final = await utterances(session, "windows")
    finally:
        await res.close()

    assert {u.track for u in live} == {0, 1}  # heard while the call went on
    for track, audio, said in ((0, caller, caller_said), (1, agent, agent_said)):
        windowed = words(" ".join(u.text for u in final if u.track == track))
        at_once = await whole(local_ai, audio, track)
        # As many of the words said as the track transcribed at once (tiny.en's own errors
        # aside): a boundary that cut a word would lose it, or hear it twice. Its errors differ
        # with the audio's length, and with the CPU (int8 kernels): on one machine (AVX-512)
        # the agent's last window, 2.6 s given with its 5.6 s of lead, heard "your term is
        # imma'ful" where the whole track heard "your service is awful": two words of 13.
        assert heard(said, windowed) >= heard(said, at_once) - 0.2, (windowed, at_once)
        assert heard(said, windowed) >= 0.5, windowed
        # A word at a boundary heard by both windows would end one utterance and start the next.
        mine = [words(u.text) for u in final if u.track == track and words(u.text)]
        doubled = [(a[-1], b[0]) for a, b in pairwise(mine) if a[-1] == b[0]]
        assert not doubled, (doubled, windowed, at_once)
        assert SequenceMatcher(None, windowed, at_once).ratio() >= 0.6, (windowed, at_once)
