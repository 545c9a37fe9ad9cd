"""AI_PROVIDER=openai against a fake OpenAI-compatible provider on loopback, with the real API,
worker, Redis and PostgreSQL: what it is sent, and how each of its failures ends."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import httpx
import numpy as np
import pytest
from httpx import AsyncClient
from pydantic import SecretStr, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.audio import AudioFormat, decode, mulaw_encode
from db.keys import AI_SLOTS_PAUSE
from jobs.ai_openai import OpenAICompatible, retry_after_s
from jobs.resources import WorkerResources, make_resources
from settings import Settings
from tests.conftest import drain_queue, make_settings
from tests.factories import complete, packet, rows, status
from tests.fake_ai_provider import FakeProvider, Reply, Wav

MULAW_8K = AudioFormat("mulaw", 8000)
FRAME = 160  # 20 ms of 8 kHz μ-law


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    async with FakeProvider().serving() as fake:
        yield fake


def openai_settings(server_urls: tuple[str, str], url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ai_provider": "openai",
        "ai_base_url": url,
        "ai_api_key": "sk-test",
        "ai_transcription_model": "whisper-test",
        "ai_sentiment_model": "chat-test",
        "ai_attempt_timeout_s": 5.0,
        "ai_max_attempts": 4,
        **overrides,
    }
    return make_settings(*server_urls, **values)


@pytest.fixture
def openai_worker(server_urls: tuple[str, str], provider: FakeProvider):
    """Run a real worker whose AI is the openai provider pointed at the fake, until idle."""

    async def run(**overrides: Any) -> WorkerResources:
        res = make_resources(openai_settings(server_urls, provider.url, **overrides))
        try:
            await drain_queue(res)
        finally:
            await res.close()
        return res

    return run


def tone(sequence: int) -> bytes:
    """One 20 ms μ-law frame whose level says which packet it is."""
    return mulaw_encode(np.full(FRAME, 200 * (sequence % 150 + 1), dtype=np.int16))


async def send_call(client: AsyncClient, call_id: str, sequences: list[int]) -> None:
    for start in range(0, len(sequences), 500):
        batch = [
            packet(s, base64.b64encode(tone(s)).decode()) for s in sequences[start : start + 500]
        ]
        answer = await client.post(f"/v1/call/stream/{call_id}/batch", json={"packets": batch})
        assert answer.status_code == 202
    await complete(client, call_id)


def expected_pcm(sequences: list[int]) -> bytes:
    """The call's audio in sequence order, a 20 ms frame of silence for each one missing."""
    frames = []
    for s in range(min(sequences), max(sequences) + 1):
        frames.append(decode(tone(s), MULAW_8K) if s in sequences else np.zeros(FRAME, np.int16))
    return np.concatenate(frames).astype("<i2").tobytes()


async def attempts(engine: AsyncEngine, call_id: str) -> list[tuple[str, str, str | None]]:
    found = await rows(
        engine,
        "SELECT step, outcome, error FROM ai_attempt WHERE call_id = :c ORDER BY id",
        c=call_id,
    )
    return [(a.step, a.outcome, a.error) for a in found]


async def test_the_call_goes_as_a_wav_of_its_audio_in_sequence_order_and_is_archived(
    client: AsyncClient, openai_worker, provider: FakeProvider, engine: AsyncEngine
):
    sent = [0, 1, 3, 2, 2, 5, 4, 7]  # reordered, a duplicate, 6 missing
    await send_call(client, "wav-call", sent)

    await openai_worker()

    call = await status(client, "wav-call")
    assert provider.problems == []
    assert call["state"] == "ARCHIVED"
    assert call["transcript"] == "hello from the fake provider"
    assert call["sentiment"] == {"label": "positive", "score": 0.75}
    assert provider.problems == []
    [upload] = provider.requests("transcriptions")
    assert upload.wav == Wav(8000, expected_pcm([0, 1, 2, 3, 4, 5, 7]))
    assert upload.form == {"model": "whisper-test", "response_format": "json"}
    assert upload.headers["authorization"] == "Bearer sk-test"
    [chat] = provider.requests("chat")
    assert chat.body["model"] == "chat-test"
    assert chat.body["messages"][-1]["content"] == "hello from the fake provider"
    assert chat.body["response_format"] == {"type": "json_object"}
    assert [a[:2] for a in await attempts(engine, "wav-call")] == [
        ("transcription", "ok"),
        ("sentiment", "ok"),
    ]


@pytest.mark.parametrize(
    "wait_header", [{"Retry-After": "2"}, {"retry-after-ms": "2000"}], ids=["seconds", "ms"]
)
async def test_a_429_pauses_every_worker_for_the_providers_retry_after_then_succeeds(
    client: AsyncClient,
    openai_worker,
    provider: FakeProvider,
    engine: AsyncEngine,
    redis,
    wait_header,
):
    provider.answer("transcriptions", Reply.error(429, "Rate limit reached", **wait_header))
    await send_call(client, "busy", [0, 1, 2])
    paused: list[int] = []

    async def watch_the_shared_pause() -> None:
        while not paused:
            ttl = await redis.pttl(AI_SLOTS_PAUSE)
            if ttl > 0:
                paused.append(ttl)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_the_shared_pause())
    try:
        await openai_worker()
    finally:
        watcher.cancel()

    assert (await status(client, "busy"))["state"] == "ARCHIVED"
    assert paused
    assert 1000 < paused[0] <= 2000
    first, second = provider.requests("transcriptions")
    assert second.at - first.at >= 2.0
    transcription = [a for a in await attempts(engine, "busy") if a[0] == "transcription"]
    assert [a[1] for a in transcription] == ["error", "ok"]
    assert "429 Rate limit reached" in str(transcription[0][2])


@pytest.mark.parametrize(
    ("failure", "says"),
    [
        (Reply.error(500, "The server had an error"), "500 The server had an error"),
        (Reply.error(503, "Overloaded"), "503 Overloaded"),
        (Reply.error(408, "Request timeout"), "408"),
        (Reply.error(409, "Conflict"), "409"),
        (Reply(hang=True), "timed out"),
        (Reply(drop=True), "connection"),
    ],
    ids=["500", "503", "408", "409", "hang", "dropped"],
)
async def test_a_transient_failure_is_retried_and_every_attempt_recorded(
    client: AsyncClient, openai_worker, provider: FakeProvider, engine: AsyncEngine, failure, says
):
    provider.answer("transcriptions", failure, failure)
    await send_call(client, "flaky", [0, 1, 2])

    await openai_worker(ai_attempt_timeout_s=1.0)

    call = await status(client, "flaky")
    assert call["state"] == "ARCHIVED"
    assert call["transcript"] == "hello from the fake provider"
    transcription = [a for a in await attempts(engine, "flaky") if a[0] == "transcription"]
    assert [a[1] for a in transcription][-1] == "ok"
    assert all(a[1] in ("error", "timeout") for a in transcription[:-1])
    assert len(transcription) == 3
    assert all(says in (a[2] or "") for a in transcription[:-1])
    assert provider.problems == []


@pytest.mark.parametrize(
    ("status_code", "message"),
    [
        (401, "Incorrect API key provided"),
        (403, "Your organisation may not use this model"),
        (400, "Invalid file format"),
        (413, "Maximum content size limit exceeded"),
    ],
)
async def test_a_permanent_refusal_fails_the_call_with_the_providers_reason_without_retrying(
    client: AsyncClient,
    openai_worker,
    provider: FakeProvider,
    engine: AsyncEngine,
    status_code,
    message,
):
    provider.answer("transcriptions", Reply.error(status_code, message))
    await send_call(client, "refused", [0, 1])

    await openai_worker()

    call = await status(client, "refused")
    assert call["state"] == "FAILED"
    assert message in call["last_error"]
    assert str(status_code) in call["last_error"]
    assert call["last_error"].startswith("transcription failed permanently")
    assert len(provider.requests("transcriptions")) == 1
    assert [a[:2] for a in await attempts(engine, "refused")] == [("transcription", "rejected")]


async def test_a_longer_calls_transcription_gets_more_time_per_second_of_audio(
    client: AsyncClient, openai_worker, provider: FakeProvider, engine: AsyncEngine
):
    # 10 s of audio at 0.2 s a second: 2 s more than the 0.5 s timeout, for the slow answer.
    provider.answer("transcriptions", Reply(delay_s=1.5))
    await send_call(client, "slow", list(range(500)))

    await openai_worker(ai_attempt_timeout_s=0.5, ai_timeout_per_audio_s=0.2)

    assert (await status(client, "slow"))["state"] == "ARCHIVED"
    assert [a[:2] for a in await attempts(engine, "slow")] == [
        ("transcription", "ok"),
        ("sentiment", "ok"),
    ]


async def test_a_refused_sentiment_keeps_the_transcript_and_fails_the_call(
    client: AsyncClient, openai_worker, provider: FakeProvider
):
    provider.answer("chat", Reply.error(404, "The model `chat-test` does not exist"))
    await send_call(client, "no-chat", [0, 1])

    await openai_worker()

    call = await status(client, "no-chat")
    assert call["state"] == "FAILED"
    assert "does not exist" in call["last_error"]
    assert call["transcript"] == "hello from the fake provider"
    assert len(provider.requests("chat")) == 1


async def test_a_sentiment_answer_that_is_not_the_json_asked_for_is_asked_again(
    client: AsyncClient, openai_worker, provider: FakeProvider
):
    chatty = {"choices": [{"message": {"role": "assistant", "content": "I think it went well!"}}]}
    provider.answer("chat", Reply(200, chatty))
    provider.sentiment = {"label": "negative", "score": -0.4}
    await send_call(client, "chatty", [0, 1])

    await openai_worker()

    call = await status(client, "chatty")
    assert call["state"] == "ARCHIVED"
    assert call["sentiment"] == {"label": "negative", "score": -0.4}
    assert len(provider.requests("chat")) == 2


async def test_a_wav_over_the_upload_limit_goes_in_parts_cut_at_frames_transcribed_in_order(
    client: AsyncClient, openai_worker, provider: FakeProvider
):
    sequences = list(range(2600))  # 52 s: 832 KB of PCM, two pages of packets
    provider.transcript_of = lambda wav: f"part of {len(wav.pcm)} bytes"
    await send_call(client, "long", sequences)

    await openai_worker(ai_max_upload_bytes=300_000)

    uploads = provider.requests("transcriptions")
    assert provider.problems == []
    assert len(uploads) == 3
    assert all(44 + len(u.wav.pcm) <= 300_000 for u in uploads if u.wav)
    assert all(len(u.wav.pcm) % (FRAME * 2) == 0 for u in uploads[:-1] if u.wav)
    assert b"".join(u.wav.pcm for u in uploads if u.wav) == expected_pcm(sequences)
    call = await status(client, "long")
    assert call["state"] == "ARCHIVED"
    assert call["transcript"] == " ".join(
        f"part of {len(u.wav.pcm)} bytes" for u in uploads if u.wav
    )


async def test_sentiment_can_be_scored_locally_while_the_provider_transcribes(
    client: AsyncClient, openai_worker, provider: FakeProvider
):
    provider.transcript_of = lambda wav: "thank you, this is excellent, I am very happy"
    await send_call(client, "vader", [0, 1])

    await openai_worker(ai_sentiment="local", ai_sentiment_model=None)

    call = await status(client, "vader")
    assert call["state"] == "ARCHIVED"
    assert call["sentiment"]["label"] == "positive"
    assert 0.5 < call["sentiment"]["score"] <= 1
    assert provider.requests("chat") == []


async def test_packets_that_are_not_audio_fail_the_call_without_asking_the_provider(
    client: AsyncClient, openai_worker, provider: FakeProvider, engine: AsyncEngine
):
    for s in range(3):
        assert (await client.post("/v1/call/stream/text", json=packet(s))).status_code == 202
    await complete(client, "text")

    await openai_worker()

    call = await status(client, "text")
    assert call["state"] == "FAILED"
    assert "the call's audio cannot be decoded: packet 0's data is not base64" in call["last_error"]
    assert provider.received == []
    assert [a[:2] for a in await attempts(engine, "text")] == [("transcription", "rejected")]


def test_openai_settings_say_what_is_missing_at_start():
    with pytest.raises(ValidationError, match=r"AI_BASE_URL.*AI_TRANSCRIPTION_MODEL.*AI_SENTIMENT"):
        Settings(_env_file=None, ai_provider="openai")
    with pytest.raises(ValidationError, match="http:// or https://"):
        Settings(
            _env_file=None,
            ai_provider="openai",
            ai_base_url="api.openai.com",
            ai_transcription_model="whisper-1",
            ai_sentiment="local",
        )
    with pytest.raises(ValidationError, match="ai_provider"):
        Settings(_env_file=None, ai_provider="whisper")


def test_retry_after_is_read_in_milliseconds_seconds_or_as_a_date():
    def wait(**headers: str) -> float | None:
        return retry_after_s(httpx.Headers(headers))

    assert wait(**{"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert wait(**{"retry-after": "3"}) == 3.0
    assert wait(**{"retry-after": "0.5"}) == 0.5
    in_a_minute = wait(**{"retry-after": formatdate(time.time() + 60, usegmt=True)})
    assert in_a_minute is not None
    assert 55 < in_a_minute <= 60
    assert wait() is None
    assert wait(**{"retry-after": "soon"}) is None


async def test_the_base_url_is_the_same_with_or_without_v1(provider: FakeProvider):
    for base in (provider.url, provider.url + "/v1/"):
        ai = OpenAICompatible(base, SecretStr(""), "m", None, local_sentiment=True)
        try:
            assert str(ai.client.base_url).rstrip("/") == provider.url
            assert "authorization" not in ai.client.headers  # no key, no header
        finally:
            await ai.aclose()
