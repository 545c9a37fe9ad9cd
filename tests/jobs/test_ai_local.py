"""AI_PROVIDER=local on real speech: sentences spoken by espeak-ng (simulate/speech.py) as 8 kHz
μ-law in 20 ms frames, streamed through the Twilio WebSocket and through HTTP packets, then the
real worker, Redis, PostgreSQL and pocketsphinx. The model is weak (BENCHMARKS.md), so the tests
ask what it can do: hear clearly more of what was said than of the same audio scrambled or
decoded wrongly, and tell a clearly polar call's sentiment. Few and short: the model is slow."""

from __future__ import annotations

import base64
import json
import os
import random
import re
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from httpx import AsyncClient
from websockets.asyncio.client import connect

from jobs.ai import Sentiment
from jobs.ai_local import LocalAI
from jobs.audio import CallAudio
from jobs.resources import ai_concurrency, make_resources
from service.app import create_app
from settings import Settings
from simulate.speech import INSTALL_HINT, frames, missing_programs, silence, synthesise
from tests.conftest import drain_queue, make_settings
from tests.factories import complete, packet, status
from tests.serving import serving

pytestmark = pytest.mark.skipif(
    bool(missing_programs()),
    reason=f"needs {', '.join(missing_programs())} to speak the test calls ({INSTALL_HINT})",
)

HAPPY = ("great, the internet works perfectly now, I am really happy",)
ANGRY = ("this is terrible, I am very angry about the broken router",)


def spoken(sentences: tuple[str, ...]) -> list[bytes]:
    """The sentences spoken one after another, as the 20 ms μ-law frames a PBX sends."""
    return frames(silence(400).join(synthesise(text) for text in sentences))


def heard(said: tuple[str, ...], transcript: str) -> float:
    """The share of the words said (those of more than three letters: "the", "and", "i'm" come
    up in any transcript) that the transcript has."""
    said_words = Counter(w for w in re.findall(r"[a-z']+", " ".join(said).lower()) if len(w) > 3)
    found = Counter(re.findall(r"[a-z']+", transcript.lower()))
    return sum((said_words & found).values()) / sum(said_words.values())


class Borrowed:
    """The module's LocalAI lent to one test's worker: its pool outlives the worker."""

    def __init__(self, ai: LocalAI) -> None:
        self.ai = ai

    async def transcribe(self, call_id: str, audio: CallAudio) -> str:
        return await self.ai.transcribe(call_id, audio)

    async def analyse_sentiment(self, call_id: str, transcript: str) -> Sentiment:
        return await self.ai.analyse_sentiment(call_id, transcript)

    async def aclose(self) -> None:
        pass


@pytest.fixture(scope="module")
async def local_ai() -> AsyncIterator[LocalAI]:
    ai = LocalAI(processes=2)
    yield ai
    await ai.aclose()


@pytest.fixture
def local_settings(server_urls: tuple[str, str]) -> Settings:
    return make_settings(*server_urls, ai_provider="local", ai_attempt_timeout_s=60.0)


@pytest.fixture
def run_local_worker(local_settings: Settings, local_ai: LocalAI):
    async def run() -> None:
        res = make_resources(local_settings, ai=Borrowed(local_ai))
        try:
            await drain_queue(res)
        finally:
            await res.close()

    return run


def twilio_start(call_id: str, encoding: str = "audio/x-mulaw") -> str:
    media_format = {"encoding": encoding, "sampleRate": 8000, "channels": 1}
    start = {
        "callSid": call_id,
        "streamSid": "MZ1",
        "tracks": ["inbound"],
        "mediaFormat": media_format,
    }
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": start})


def twilio_media(sequence: int, frame: bytes) -> str:
    media = {
        "track": "inbound",
        "chunk": str(sequence),
        "timestamp": str(sequence * 20),
        "payload": base64.b64encode(frame).decode(),
    }
    return json.dumps(
        {"event": "media", "sequenceNumber": str(sequence), "streamSid": "MZ1", "media": media}
    )


async def stream_call(address: str, call_id: str, audio: list[bytes], encoding: str) -> None:
    """A Twilio Media Stream: start, one media message per frame, stop."""
    async with connect(f"ws://{address}/v1/call/media") as ws:
        await ws.send(twilio_start(call_id, encoding))
        for sequence, frame in enumerate(audio, start=2):
            await ws.send(twilio_media(sequence, frame))
        await ws.send(json.dumps({"event": "stop", "sequenceNumber": "999999", "streamSid": "MZ1"}))
        await ws.wait_closed()


async def post_call(client: AsyncClient, call_id: str, audio: list[bytes]) -> None:
    """HTTP packets: one per 20 ms frame, in batches, as a PBX posts them."""
    packets = [packet(s, base64.b64encode(f).decode()) for s, f in enumerate(audio)]
    for start in range(0, len(packets), 200):
        batch = {"packets": packets[start : start + 200]}
        assert (
            await client.post(f"/v1/call/stream/{call_id}/batch", json=batch)
        ).status_code == 202
    await complete(client, call_id)


async def test_a_call_spoken_over_the_media_websocket_is_transcribed_and_its_sentiment_scored(
    settings: Settings, run_local_worker
):
    audio = spoken(HAPPY)
    async with serving(create_app(settings)) as address:
        await stream_call(address, "CA-happy", audio, "audio/x-mulaw")
        # The same audio, but the stream says it is A-law: decoded, it is noise with a rhythm.
        await stream_call(address, "CA-misread", audio, "audio/x-alaw")

        await run_local_worker()

        async with AsyncClient(base_url=f"http://{address}") as client:
            happy = await status(client, "CA-happy")
            misread = await status(client, "CA-misread")
    assert happy["state"] == "ARCHIVED"
    assert misread["state"] == "ARCHIVED"
    assert heard(HAPPY, happy["transcript"]) >= 0.2, happy["transcript"]
    assert heard(HAPPY, misread["transcript"]) <= heard(HAPPY, happy["transcript"]) / 2
    assert happy["sentiment"]["label"] == "positive"
    assert 0.05 <= happy["sentiment"]["score"] <= 1


async def test_a_call_spoken_in_http_packets_is_transcribed_and_its_sentiment_scored(
    client: AsyncClient, run_local_worker
):
    audio = spoken(ANGRY)
    shuffled = audio[:]
    random.Random(9).shuffle(shuffled)  # every frame there, in the wrong order
    await post_call(client, "angry", audio)
    await post_call(client, "shuffled", shuffled)

    await run_local_worker()

    angry, scrambled = await status(client, "angry"), await status(client, "shuffled")
    assert angry["state"] == "ARCHIVED"
    assert scrambled["state"] == "ARCHIVED"
    assert heard(ANGRY, angry["transcript"]) >= 0.2, angry["transcript"]
    assert heard(ANGRY, scrambled["transcript"]) <= heard(ANGRY, angry["transcript"]) / 2
    assert angry["sentiment"]["label"] == "negative"
    assert -1 <= angry["sentiment"]["score"] <= -0.05


async def test_packets_that_are_not_audio_fail_the_call_for_good_with_the_reason(
    client: AsyncClient, run_local_worker
):
    for s in range(3):
        assert (await client.post("/v1/call/stream/words", json=packet(s))).status_code == 202
    await complete(client, "words")

    await run_local_worker()

    call = await status(client, "words")
    assert call["state"] == "FAILED"
    assert call["last_error"] == (
        "transcription failed permanently: the call's audio cannot be decoded: "
        "packet 0's data is not base64"
    )
    assert call["ai_attempts"] == 1  # never retried


def test_the_local_providers_concurrency_is_capped_by_the_cores():
    local = make_settings("postgresql://x", "redis://x", ai_provider="local", ai_max_concurrency=99)
    mock = make_settings("postgresql://x", "redis://x", ai_max_concurrency=99)

    assert ai_concurrency(local) == min(99, len(os.sched_getaffinity(0)))
    assert ai_concurrency(mock) == 99
