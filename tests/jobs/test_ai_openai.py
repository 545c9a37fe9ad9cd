"""AI_PROVIDER=openai against a fake OpenAI-compatible provider on loopback, with the real API,
worker, Redis and PostgreSQL: what it is sent, and how each of its failures ends. Its timed
segments (verbose_json) are tested on the shipped recordings of real speech, the client on its
own (no worker, no servers but the fake)."""

from __future__ import annotations

import asyncio
import base64
import math
import re
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from httpx import AsyncClient
from pydantic import SecretStr, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.audio import MULAW_SILENCE, TELEPHONY, AudioFormat, decode, mulaw_encode
from core.recording import Recording
from db.keys import AI_SLOTS_PAUSE
from db.packets import StoredPacket
from jobs.ai import PermanentAIError, Spoken, TransientAIError, Word
from jobs.ai_openai import TIMED, WORDS, OpenAICompatible, _form, retry_after_s, spoken_from
from jobs.audio import TrackAudio
from jobs.resources import WorkerResources, make_resources
from settings import Settings
from tests.conftest import drain_queue, make_settings
from tests.factories import complete, packet, rows, status
from tests.fake_ai_provider import FakeProvider, Received, Reply, Wav, speech_in
from tests.segments_in_memory import SegmentsInMemory

MULAW_8K = AudioFormat("mulaw", 8000)
FRAME = 160  # 20 ms of 8 kHz μ-law
RECORDINGS = Path(__file__).parents[2] / "simulate" / "recordings"
SPOKEN = ["positive-1", "negative-1", "neutral-1", "positive-2", "negative-2", "neutral-2"]
GAP_S = 1.5  # of silence before, between and after the recordings
TIMED_FORM = {
    "model": "whisper-test",
    "response_format": "verbose_json",
    "timestamp_granularities[]": "segment",
}


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
    """The call's stored audio in sequence order: what the transcriber is given (the silence
    the recording puts in for a missing packet is not sent)."""
    frames = [decode(tone(s), MULAW_8K) for s in sorted(set(sequences))]
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
    assert upload.wav == Wav(8000, expected_pcm([0, 1, 2, 3, 4, 5, 7]))  # 6's silence: not sent
    assert upload.form == TIMED_FORM
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


async def recorded_call(names: list[str]) -> tuple[TrackAudio, list[tuple[float, float]]]:
    """The shipped recordings one after another, GAP_S of silence around each, in 5 s segments
    of 20 ms packets as the worker stores them; and where in it each recording is (seconds)."""
    ulaw, where = bytearray(), []
    for name in names:
        ulaw += bytes([MULAW_SILENCE]) * int(GAP_S * 8000)
        start = len(ulaw) / 8000
        ulaw += (RECORDINGS / f"{name}.ulaw").read_bytes()
        where.append((start, len(ulaw) / 8000))
    ulaw += bytes([MULAW_SILENCE]) * (int(GAP_S * 8000) + -len(ulaw) % FRAME)
    packets = [
        StoredPacket(
            n, n * 0.02, base64.b64encode(ulaw[at : at + FRAME]).decode(), 1.7e9, 0, (n, 0)
        )
        for n, at in enumerate(range(0, len(ulaw), FRAME))
    ]
    segments = [packets[at : at + 250] for at in range(0, len(packets), 250)]
    source = SegmentsInMemory.of_packets(segments, TELEPHONY, True)
    recording = await Recording.load(source, TELEPHONY, 4 * 3600)
    return TrackAudio(recording, 0, 0, recording.samples), where


def part_bounds(uploads: list[Received]) -> list[tuple[float, float]]:
    """Where in the call each upload's audio starts and ends, in seconds."""
    bounds, at = [], 0
    for upload in uploads:
        assert upload.wav is not None
        bounds.append((at / 2 / 8000, (at + len(upload.wav.pcm)) / 2 / 8000))
        at += len(upload.wav.pcm)
    return bounds


@pytest.fixture
async def ai(provider: FakeProvider) -> AsyncIterator[OpenAICompatible]:
    """The client alone, pointed at the fake; a WAV over 150 KB (about 9 s) goes in parts."""
    client = OpenAICompatible(
        provider.url,
        SecretStr("sk-test"),
        "whisper-test",
        None,
        local_sentiment=True,
        max_upload_bytes=150_000,
    )
    yield client
    await client.aclose()


async def test_segments_are_timed_in_the_call_across_upload_parts_increasing_and_where_speech_is(
    ai: OpenAICompatible, provider: FakeProvider
):
    audio, where = await recorded_call(SPOKEN)
    seconds = (await audio.facts()).seconds

    heard = await ai.transcribe_segments("recorded", audio)

    assert provider.problems == []
    bounds = part_bounds(provider.requests("transcriptions"))
    assert len(bounds) >= 3
    assert bounds[-1][1] == seconds
    assert all(u.form == TIMED_FORM for u in provider.requests("transcriptions"))
    assert heard
    assert heard[0].start_s >= 0
    assert heard[-1].end_s <= seconds
    assert all(s.start_s <= s.end_s for s in heard)
    assert all(a.end_s <= b.start_s for a, b in pairwise(heard))
    # Each stretch inside one part, and inside one recording (20 ms frames, rounded times).
    assert all(any(a <= s.start_s and s.end_s <= b for a, b in bounds) for s in heard)
    assert all(any(a - 0.03 <= s.start_s and s.end_s <= b + 0.03 for a, b in where) for s in heard)
    # Every recording heard, also those of the later parts: their times were moved.
    assert all(any(s.start_s < b and a < s.end_s for s in heard) for a, b in where)
    uploads = provider.requests("transcriptions")
    said = ["hello from the fake provider" for u in uploads if u.wav and speech_in(u.wav)]
    assert " ".join(s.text for s in heard) == " ".join(said)
    assert all(s.text == s.text.strip() and s.text for s in heard)


async def test_a_server_that_ignores_verbose_json_gives_one_stretch_per_part(
    ai: OpenAICompatible, provider: FakeProvider
):
    provider.gives_segments = False
    provider.transcript_of = lambda wav: f"  {len(wav.pcm)} bytes "
    audio, _ = await recorded_call(SPOKEN)

    heard = await ai.transcribe_segments("recorded", audio)

    uploads = provider.requests("transcriptions")
    assert all(u.form == TIMED_FORM for u in uploads)
    assert heard == [
        Spoken(a, b, f"{len(u.wav.pcm)} bytes")
        for (a, b), u in zip(part_bounds(provider.requests("transcriptions")), uploads, strict=True)
        if u.wav
    ]


async def test_a_model_that_refuses_verbose_json_is_asked_for_plain_json_from_then_on(
    ai: OpenAICompatible, provider: FakeProvider
):
    provider.refuses_verbose_json = True
    audio, _ = await recorded_call(SPOKEN)

    heard = await ai.transcribe_segments("recorded", audio)
    again = await ai.transcribe_segments("recorded", (await recorded_call(SPOKEN[:1]))[0])

    refused, *uploads, last = provider.requests("transcriptions")
    assert refused.form == TIMED_FORM
    assert refused.wav == uploads[0].wav
    untimed = {"model": "whisper-test", "response_format": "json"}
    assert all(u.form == untimed for u in [*uploads, last])
    parts = part_bounds(uploads)
    assert len(parts) >= 3
    assert heard == [Spoken(a, b, "hello from the fake provider") for a, b in parts]
    assert " ".join(s.text for s in again) == "hello from the fake provider"


@pytest.mark.parametrize(
    "answer",
    [
        {"text": "  said  "},
        {"text": "  said  ", "segments": None},
        {"text": "  said  ", "segments": []},
    ],
    ids=["no-segments", "null", "empty"],
)
async def test_an_answer_without_segments_is_its_text_over_the_whole_audio(
    ai: OpenAICompatible, provider: FakeProvider, answer
):
    provider.answer("transcriptions", Reply(200, answer))
    audio, _ = await recorded_call(SPOKEN[:1])

    heard = await ai.transcribe_segments("recorded", audio)

    assert heard == [Spoken(0.0, (await audio.facts()).seconds, "said")]


async def test_segment_times_are_clamped_into_the_audio_kept_increasing_and_empty_ones_dropped(
    ai: OpenAICompatible, provider: FakeProvider
):
    segments = [
        {"start": -0.3, "end": 0.8, "text": "  hello "},
        {"start": 0.5, "end": 0.9, "text": "again"},  # starts before the one before ended
        {"start": 1.0, "end": 1.2, "text": "   "},
        {"start": 1.5, "end": 99, "text": " bye"},  # ends after the audio
        {"start": 120, "end": 121, "text": "after"},
    ]
    provider.answer("transcriptions", Reply(200, {"text": "ignored", "segments": segments}))
    audio, _ = await recorded_call(SPOKEN[:1])
    seconds = (await audio.facts()).seconds

    heard = await ai.transcribe_segments("recorded", audio)

    assert heard == [
        Spoken(0.0, 0.8, "hello"),
        Spoken(0.8, 0.9, "again"),
        Spoken(1.5, seconds, "bye"),
        Spoken(seconds, seconds, "after"),
    ]


MALFORMED = {
    "a-time-as-text": [{"start": "0.0", "end": 1.0, "text": "hi"}],
    "no-end": [{"start": 0.0, "text": "hi"}],
    "end-before-start": [{"start": 2.0, "end": 1.0, "text": "hi"}],
    "not-finite": [{"start": 0.0, "end": math.inf, "text": "hi"}],
    "a-boolean": [{"start": False, "end": True, "text": "hi"}],
    "no-text": [{"start": 0.0, "end": 1.0}],
    "not-an-object": ["hi"],
    "not-a-list": {"0": {"start": 0.0, "end": 1.0, "text": "hi"}},
}


@pytest.mark.parametrize("segments", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_segments_are_a_permanent_failure_as_any_bad_transcription_answer(
    ai: OpenAICompatible, provider: FakeProvider, segments
):
    provider.answer("transcriptions", Reply(200, {"text": "hi", "segments": segments}))
    audio, _ = await recorded_call(SPOKEN[:1])

    with pytest.raises(PermanentAIError, match="segment"):
        await ai.transcribe_segments("recorded", audio)
    assert len(provider.requests("transcriptions")) == 1


async def test_a_call_whose_segments_are_malformed_fails_without_retrying(
    client: AsyncClient, openai_worker, provider: FakeProvider, engine: AsyncEngine
):
    bad = [{"start": 1.0, "end": 0.5, "text": "backwards"}]
    provider.answer("transcriptions", Reply(200, {"text": "backwards", "segments": bad}))
    await send_call(client, "backwards", [0, 1, 2])

    await openai_worker()

    call = await status(client, "backwards")
    assert call["state"] == "FAILED"
    assert "segment is malformed" in call["last_error"]
    assert [a[:2] for a in await attempts(engine, "backwards")] == [("transcription", "rejected")]


@pytest.mark.parametrize(
    ("failure", "error", "retry_after"),
    [
        (Reply.error(429, "Rate limit reached", **{"Retry-After": "2"}), TransientAIError, 2.0),
        (Reply.error(503, "Overloaded"), TransientAIError, None),
        (Reply(drop=True), TransientAIError, None),
        (Reply.error(401, "Incorrect API key provided"), PermanentAIError, None),
        (Reply.error(400, "Invalid file format"), PermanentAIError, None),
    ],
    ids=["429", "503", "dropped", "401", "400"],
)
async def test_segments_fail_as_the_transcript_does(
    ai: OpenAICompatible, provider: FakeProvider, failure, error, retry_after
):
    provider.answer("transcriptions", failure)
    audio, _ = await recorded_call(SPOKEN[:1])

    with pytest.raises(error) as raised:
        await ai.transcribe_segments("recorded", audio)
    assert getattr(raised.value, "retry_after_s", None) == retry_after
    assert len(provider.requests("transcriptions")) == 1


def test_word_times_are_asked_as_a_second_granularity_only_when_wanted():
    head, _ = _form("b", [("model", "m"), *TIMED, *WORDS], "audio.wav", "audio/wav")
    fields = re.findall(rb'name="([^"]+)"\r\n\r\n([^\r]*)', head)
    assert fields.count((b"timestamp_granularities[]", b"word")) == 1
    assert fields.count((b"timestamp_granularities[]", b"segment")) == 1
    assert (b"timestamp_granularities[]", b"word") not in re.findall(
        rb'name="([^"]+)"\r\n\r\n([^\r]*)', _form("b", TIMED, "a.wav", "audio/wav")[0]
    )


def test_verbose_json_words_go_to_the_segment_they_fall_in_timed_in_the_whole_audio():
    answer = {
        "text": "my card is 4111. thanks",
        "segments": [{"start": 0.0, "end": 2.0, "text": "my card is 4111."},
                     {"start": 2.5, "end": 3.0, "text": "thanks"}],
        "words": [{"word": "my", "start": 0.0, "end": 0.3}, {"word": "card", "start": 0.3,
                   "end": 0.7}, {"word": "is", "start": 0.7, "end": 0.9},
                  {"word": "4111", "start": 1.0, "end": 1.9},
                  {"word": "thanks", "start": 2.5, "end": 3.0}],
    }  # fmt: skip
    first, second = spoken_from(answer, 10.0, 13.0, words=True)
    assert first.words is not None
    assert [w.text for w in first.words] == ["my", "card", "is", "4111"]
    assert first.words[3] == Word(11.0, 11.9, "4111")
    assert second.words == (Word(12.5, 13.0, "thanks"),)
    # Not asked for, or not given (a server that ignored the granularity): None.
    assert spoken_from(answer, 10.0, 13.0)[0].words is None
    del answer["words"]
    assert spoken_from(answer, 10.0, 13.0, words=True)[0].words is None


def test_a_malformed_word_is_a_permanent_error():
    answer = {"text": "hi", "words": [{"word": "hi", "start": "soon", "end": 1.0}]}
    with pytest.raises(PermanentAIError, match="word is malformed"):
        spoken_from(answer, 0.0, 1.0, words=True)
