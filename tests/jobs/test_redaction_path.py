"""REDACT_PII=transcript: a card number, a phone number and an e-mail said in a call (the mock's
text packets, written and spoken forms) are redacted before anything stores or tells them: not in
the utterances, the transcript, the feed, PostgreSQL's rows; sentiment is scored on the redacted
text. Real Redis, PostgreSQL, arq (REDACT_PII=transcript,audio:
tests/jobs/test_audio_redaction.py)."""

from __future__ import annotations

import re

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from db.keys import EVENTS
from jobs.resources import make_resources
from service.app import create_asgi
from settings import Settings
from tests.conftest import drain_queue, make_settings
from tests.factories import rows
from tests.fakes import ScriptedAI

SAID = [
    "my card number is 4111 1111 1111 1111 thanks",
    "you can call me back on five five five, one two three, four five six seven",
    "my email is jo dot doe at example dot com",
    "and the card is four one one one one one one one one one one one one one one one",
]
CARD_DIGITS = re.compile(r"4111|1111|555|4567|jo\.doe|example")


@pytest.fixture
def redacting(server_urls: tuple[str, str]) -> Settings:
    return make_settings(*server_urls, redact_pii="transcript")


async def test_personal_data_is_redacted_before_it_is_stored_or_told(
    redacting: Settings, redis: Redis, engine: AsyncEngine
):
    app = create_asgi(redacting)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as http,
    ):
        for n, text in enumerate(SAID):
            packet = {"sequence": n, "data": text, "timestamp": n * 1.0}
            assert (await http.post("/v1/call/stream/pii-1", json=packet)).status_code == 202
        await http.post("/v1/call/complete/pii-1")
        res = make_resources(redacting, ai=ScriptedAI())
        try:
            await drain_queue(res)
        finally:
            await res.close()
        record = (await http.get("/v1/calls/pii-1")).json()
        said = (await http.get("/v1/calls/pii-1/transcript")).json()

    assert record["state"] == "ARCHIVED", record
    transcript = record["transcript"]
    for placeholder in ("[CARD_NUMBER]", "[PHONE_NUMBER]", "[EMAIL]"):
        assert placeholder in transcript, transcript
    assert not CARD_DIGITS.search(transcript), transcript
    assert all(not CARD_DIGITS.search(u["text"]) for u in said["utterances"])
    # Nowhere in PostgreSQL: the utterances, the transcript, the attempts' errors.
    stored = await rows(
        engine,
        "SELECT text FROM utterance WHERE call_id = 'pii-1' UNION ALL "
        "SELECT transcript FROM call WHERE call_id = 'pii-1' UNION ALL "
        "SELECT coalesce(error, '') FROM ai_attempt WHERE call_id = 'pii-1'",
    )
    assert stored
    assert not any(CARD_DIGITS.search(r[0] or "") for r in stored)
    # Nor on the live feed.
    feed = b" ".join(f[b"e"] for _, f in await redis.xrange(EVENTS))
    assert b"[CARD_NUMBER]" in feed
    # Its events' own numbers (times, scores, ids: "at":1796568746.5551624) are not said.
    assert not CARD_DIGITS.search(re.sub(r'":-?[0-9][0-9.eE+-]*', '":0', feed.decode()))
