"""REDACT_PII=transcript,audio against real Redis and PostgreSQL: a two-party call of real speech
(espeak-ng) reading out a card number (the caller) and a phone number and an e-mail (the agent),
transcribed live and at its end by the local model (Whisper tiny.en, word times): no digits of
them in the transcript, the feed, the webhooks' outbox or the call's rows, and the recording
silent where they were said while the rest is what was sent; a live call serves only what has
been transcribed. With a provider that gives no word times, the whole utterance is silenced and
the call's history says so; a worker killed mid-rewrite leaves the window to redo; a late packet
is stored silenced; text packets are redacted in the transcript and have no recording."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import wave
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core.audio import TELEPHONY, decode
from db.keys import EVENTS
from db.packets import NewPacket, Track
from db.segments import overwrite
from jobs import transcription
from jobs.ai import Sentiment, SpeechSource, Spoken, mock_spoken, sentiment_of
from jobs.ai_local import LocalAI
from jobs.process import process_call
from jobs.resources import make_resources
from jobs.segments import flush_segment
from jobs.transcription import AUDIO_REDACTION, live_pass
from service.app import create_asgi
from settings import Settings
from simulate import speech
from tests.conftest import make_settings
from tests.factories import rows
from tests.jobs.test_webhooks import SECRET as WEBHOOK_SECRET
from tests.needs import speech_or_skip
from tests.webhook_receiver import drain

FRAME = 160
RATE = TELEPHONY.rate
CARD = "4111111111111111"
PHONE = "5550100199"
EVERY_EVENT = "call.completed,call.archived,call.failed,call.utterance"
MEDIA = {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
# Their digits as said or as Whisper writes them ("4,111,111...", "212-555-0199"), whole groups
# (never inside another number: a row's times, durations and counts are digits too), and the
# e-mail's domain.
SECRETS = re.compile(
    r"(?<![\d.])(4,?111|1111)(?![\d.])|212\D{0,3}555|555\D{0,3}0199|2125550199|example"
)
# The call's rows, as text (what a pg_dump of them would show).
CALL_ROWS = " UNION ALL ".join(
    f"SELECT row_to_json(t)::text FROM {table} t WHERE call_id = :call_id"
    for table in ("call", "utterance", "transcript_window", "ai_attempt", "state_transition",
                  "webhook_delivery")
)  # fmt: skip


def said(parts: list[tuple[str, bool]]) -> tuple[bytes, list[tuple[int, int]]]:
    """The parts spoken one after another (μ-law), and the sample ranges of the personal data
    in those flagged (a part says it after its 4 words of lead-in, "My card number is": where
    those end is measured by speaking them alone)."""
    audio, secret = b"", []
    for text, pii in parts:
        piece = speech.synthesise(text) + speech.silence(300)
        if pii:
            lead = len(speech.synthesise(" ".join(text.split()[:4])))
            secret.append((len(audio) + lead, len(audio) + len(piece)))
        audio += piece
    return audio[: len(audio) // FRAME * FRAME], secret


def settings_for(server_urls: tuple[str, str], **extra: Any) -> Settings:
    return make_settings(*server_urls, redact_pii="transcript,audio", segment_seconds=6.0, **extra)


async def send(res: Any, call_id: str, tracks: dict[Track, bytes], live: bool) -> None:
    """Both tracks, 6 s at a time, each followed by the segment's flush and live pass."""
    await res.ingestion.open_call(call_id, MEDIA)
    frames = max(len(a) for a in tracks.values()) // FRAME
    for start in range(0, frames, 300):
        batch = [
            NewPacket(n, n * 0.02, base64.b64encode(a[n * FRAME : (n + 1) * FRAME]).decode(), t)
            for n in range(start, min(start + 300, frames))
            for t, a in tracks.items()
            if n * FRAME < len(a)
        ]
        await res.ingestion.append(call_id, batch)
        await flush_segment(res, call_id)
        if live:
            await live_pass(res, call_id)


async def recording(settings: Settings, call_id: str) -> np.ndarray[Any, Any]:
    """GET .../audio as samples x channels."""
    app = create_asgi(settings)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as http,
    ):
        answer = await http.get(f"/v1/calls/{call_id}/audio")
    assert answer.status_code == 200, answer.text
    with wave.open(io.BytesIO(answer.content)) as wav:
        channels, data = wav.getnchannels(), wav.readframes(wav.getnframes())
    return np.frombuffer(data, dtype="<i2").reshape(-1, channels)


def rms(samples: np.ndarray[Any, Any]) -> float:
    return float(np.sqrt((samples.astype(np.float64) ** 2).mean())) if len(samples) else 0.0


def assert_silenced(
    got: np.ndarray[Any, Any], sent: bytes, secret: list[tuple[int, int]], margin: int, heard: int
) -> None:
    """Near silent over the first `heard` secret ranges (what the model heard as said: espeak-ng
    and tiny.en garble a spoken e-mail beyond recognition); every sample outside them all (past
    `margin`) as sent."""
    original = decode(sent, TELEPHONY)
    got = got[: len(original)]
    for a, b in secret[:heard]:
        assert rms(got[a:b]) < 0.25 * rms(original[a:b]), (a, b, rms(got[a:b]))
    kept = np.ones(len(got), dtype=bool)
    changed = got != original[: len(got)]
    for a, b in secret:
        kept[max(0, a - margin) : b + margin] = False
    assert not (changed & kept).any(), np.flatnonzero(changed & kept)[:10] / RATE
    assert (got[changed] == 0).all()  # what changed is silence, nothing else


async def leaks(engine: AsyncEngine, redis: Redis, call_id: str) -> list[str]:
    stored = [r[0] for r in await rows(engine, CALL_ROWS, call_id=call_id)]
    feed = [f[b"e"].decode() for _, f in await redis.xrange(EVENTS)]
    return [text for text in [*stored, *feed] if call_id in text and SECRETS.search(text)]


@pytest.fixture(scope="module")
async def local_ai() -> AsyncIterator[LocalAI]:
    ai = LocalAI(processes=1)
    yield ai
    await ai.aclose()


async def test_a_card_phone_and_email_said_are_silenced_in_the_recording_and_gone_from_text(
    server_urls: tuple[str, str], local_ai: LocalAI, engine: AsyncEngine, redis: Redis
):
    speech_or_skip()
    caller, card = said([("Hello, I would like to pay my bill.", False),
                         ("My card number is 4111 1111 1111 1111.", True),
                         ("Thank you very much.", False)])  # fmt: skip
    agent, contact = said([("Thanks for calling, how can I help?", False),
                           ("My phone number is 2125550199.", True),
                           ("or by email to help at example dot com.", True)])  # fmt: skip
    # Every event a webhook: their outbox rows are the call's rows checked below.
    settings = settings_for(server_urls, ai_provider="local", webhook_urls="http://127.0.0.1:9/x",
                            webhook_secret=WEBHOOK_SECRET, webhook_events=EVERY_EVENT)  # fmt: skip
    res = make_resources(settings, ai=local_ai)
    try:
        await send(res, "pii-audio", {Track.INBOUND: caller, Track.OUTBOUND: agent}, live=True)
        await res.ingestion.complete("pii-audio")
        assert await process_call(res, "pii-audio") == "ARCHIVED"
        await drain(res, 50)  # one attempt each (nobody listens): bodies made
    finally:
        await res.close()

    transcript = await rows(engine, "SELECT transcript FROM call WHERE call_id = 'pii-audio'")
    assert "[CARD_NUMBER]" in transcript[0][0], transcript
    hooks = await rows(
        engine, "SELECT body::text FROM webhook_delivery WHERE call_id = 'pii-audio'"
    )
    assert all(h[0] for h in hooks)
    assert any("[CARD_NUMBER]" in h[0] for h in hooks)  # the utterances' webhooks, redacted
    assert not await leaks(engine, redis, "pii-audio")
    got = await recording(settings, "pii-audio")
    assert_silenced(got[:, 0], caller, card, RATE // 2, heard=1)
    assert_silenced(got[:, 1], agent, contact, RATE // 2, heard=1)


class NoWordTimes:
    """A provider that hears `says` in every window of audio (by default personal data), and
    gives no word times (as the mock gives none); text packets it reads as the mock does."""

    def __init__(self, says: str = f"my card number is {CARD}") -> None:
        self.says = says

    async def transcribe_segments(
        self, call_id: str, audio: SpeechSource, *, words: bool = False
    ) -> list[Spoken]:
        if await audio.texts():
            return await mock_spoken(audio)
        seconds = (await audio.facts()).seconds
        return [Spoken(0.0, seconds, self.says)]

    async def analyse_sentiment(self, call_id: str, transcript: str) -> Sentiment:
        return sentiment_of(transcript)

    async def aclose(self) -> None:
        pass


def tone(seconds: float) -> bytes:
    """A loud μ-law tone: audio that is nowhere silent."""
    t = np.arange(int(seconds * RATE)) / RATE
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    from core.audio import mulaw_encode

    return mulaw_encode(pcm)


async def test_without_word_times_the_whole_utterance_is_silenced_and_the_history_says_so(
    server_urls: tuple[str, str], engine: AsyncEngine, redis: Redis
):
    settings = settings_for(server_urls)
    audio = tone(3.0)
    res = make_resources(settings, ai=NoWordTimes())
    try:
        await send(res, "pii-whole", {Track.INBOUND: audio}, live=False)
        await res.ingestion.complete("pii-whole")
        assert await process_call(res, "pii-whole") == "ARCHIVED"
        # A re-run of the call (at least once delivery) restores nothing.
        await process_call(res, "pii-whole")
    finally:
        await res.close()

    got = await recording(settings, "pii-whole")
    assert len(got) == len(audio)
    assert not got.any()  # all of it: the utterance's span
    notes = await rows(
        engine,
        "SELECT outcome, error FROM ai_attempt WHERE call_id = 'pii-whole' AND step = :step",
        step=AUDIO_REDACTION,
    )
    assert notes
    assert notes[0].outcome == "fallback"
    assert "no word times" in notes[0].error
    assert "whole utterance" in notes[0].error
    assert not await leaks(engine, redis, "pii-whole")


async def test_a_live_call_serves_only_audio_already_transcribed_and_silenced(
    server_urls: tuple[str, str],
):
    settings = settings_for(server_urls)
    res = make_resources(settings, ai=NoWordTimes())
    try:
        # Flushed, not transcribed: nothing of it is served yet.
        pause = speech.silence(400)
        audio = tone(1.5) + pause + tone(1.5) + pause + tone(0.6)
        await send(res, "pii-live", {Track.INBOUND: audio}, live=False)
        assert len(await recording(settings, "pii-live")) == 0
        await live_pass(res, "pii-live")
    finally:
        await res.close()
    got = await recording(settings, "pii-live")
    # What is served now is what the live pass transcribed (to its window's last pause), and
    # silenced; the rest waits for the next window.
    assert 0 < len(got) < len(audio)
    assert not got.any()


async def test_a_worker_killed_mid_rewrite_leaves_the_window_to_redo_and_the_next_run_silences_it(
    server_urls: tuple[str, str], engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
):
    settings = settings_for(server_urls)
    audio = tone(2.0) + speech.silence(400) + tone(0.6)
    stored = (
        "SELECT string_agg(payload, '' ORDER BY segment) FROM call_segment"
        " WHERE call_id = 'pii-kill'"
    )

    async def killed_after_rewriting(*args: Any, **kwargs: Any) -> int:
        await overwrite(*args, **kwargs)
        raise asyncio.CancelledError  # the worker dies before the window's transaction commits

    res = make_resources(settings, ai=NoWordTimes())
    try:
        await send(res, "pii-kill", {Track.INBOUND: audio}, live=False)
        monkeypatch.setattr(transcription, "overwrite", killed_after_rewriting)
        with pytest.raises(asyncio.CancelledError):
            await live_pass(res, "pii-kill")
        # Rolled back together: no window stored, so nothing served and the audio as sent.
        assert (await rows(engine, stored))[0][0] == audio
        assert len(await recording(settings, "pii-kill")) == 0
        monkeypatch.setattr(transcription, "overwrite", overwrite)
        await res.ingestion.complete("pii-kill")
        assert await process_call(res, "pii-kill") == "ARCHIVED"
    finally:
        await res.close()
    got = await recording(settings, "pii-kill")
    assert len(got) == len(audio)
    assert not got.any()


async def test_a_late_packet_is_stored_silenced_as_it_may_land_where_redaction_has_been(
    server_urls: tuple[str, str],
):
    settings = settings_for(server_urls)
    audio = tone(3.0)
    late = range(50, 60)  # 200 ms, sent after the segment around it was stored
    res = make_resources(settings, ai=NoWordTimes(says="nothing personal here"))
    try:
        await res.ingestion.open_call("pii-late", MEDIA)
        frames = [base64.b64encode(audio[n * FRAME : (n + 1) * FRAME]).decode()
                  for n in range(len(audio) // FRAME)]  # fmt: skip
        packets = [NewPacket(n, n * 0.02, f, Track.INBOUND) for n, f in enumerate(frames)]
        await res.ingestion.append("pii-late", [p for p in packets if p.sequence not in late])
        await flush_segment(res, "pii-late")
        await res.ingestion.append("pii-late", [packets[n] for n in late])
        await res.ingestion.complete("pii-late")
        assert await process_call(res, "pii-late") == "ARCHIVED"
    finally:
        await res.close()
    got = (await recording(settings, "pii-late"))[:, 0]
    original = decode(audio, TELEPHONY)
    assert len(got) == len(original)
    silenced = slice(late[0] * FRAME, (late[-1] + 1) * FRAME)
    assert not got[silenced].any()
    kept = np.ones(len(got), dtype=bool)
    kept[silenced] = False
    assert (got[kept] == original[kept]).all()  # nothing else changed


async def test_text_packets_are_redacted_in_the_transcript_and_have_no_recording(
    server_urls: tuple[str, str], engine: AsyncEngine, redis: Redis
):
    settings = settings_for(server_urls)
    res = make_resources(settings, ai=NoWordTimes())
    try:
        await res.ingestion.open_call("pii-text", {})
        packets = [NewPacket(0, 0.0, f"my card number is {CARD}", Track.INBOUND),
                   NewPacket(1, 0.02, "call me on five five five, oh one oh oh, one nine nine",
                             Track.INBOUND)]  # fmt: skip
        await res.ingestion.append("pii-text", packets)
        await res.ingestion.complete("pii-text")
        assert await process_call(res, "pii-text") == "ARCHIVED"
    finally:
        await res.close()
    utterances = await rows(engine, "SELECT text FROM utterance WHERE call_id = 'pii-text'")
    # The packets' own text, as stored, is masked where it said them (a byte for a byte).
    sent = await rows(
        engine, "SELECT convert_from(payload, 'UTF8') FROM call_segment WHERE call_id = 'pii-text'"
    )
    assert sent[0][0].startswith("my card number is ****************")
    assert not SECRETS.search(sent[0][0])
    assert "[CARD_NUMBER]" in utterances[0].text
    assert "[PHONE_NUMBER]" in utterances[0].text
    assert not await leaks(engine, redis, "pii-text")
