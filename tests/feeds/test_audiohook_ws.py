"""Genesys AudioHook v2 at /v1/call/audiohook, against a real uvicorn, Redis, PostgreSQL and arq
worker, with a peer that speaks the protocol as Genesys Cloud does (simulate/pbx.py)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from websockets.exceptions import InvalidStatus

from db.keys import call_keys
from service.app import create_asgi
from settings import Settings
from simulate.pbx import AudioHookPeer, closing
from tests.conftest import make_settings
from tests.feeds.calls import (
    AGENT_SAYS,
    CALLER_SAYS,
    assert_both_speakers,
    assert_channel_holds,
    callstream,
    needs_espeak,
    settled,
    spoken,
    spoken_mulaw,
    stereo,
    wait_state,
)
from tests.serving import serving

INGEST_KEY = "ingest-ah-1"
SECRET = b"the integration's client secret, 32+"


@pytest.fixture
def signed(server_urls: tuple[str, str]) -> Settings:
    db_url, redis_url = server_urls
    return make_settings(
        db_url,
        redis_url,
        ingest_api_keys=SecretStr(INGEST_KEY),
        supervisor_api_keys=SecretStr("reader-1"),
        audiohook_client_secret=SecretStr(base64.b64encode(SECRET).decode()),
    )


@pytest.fixture
async def url(signed: Settings) -> AsyncIterator[str]:
    """The API (keys and a client secret on), without a worker (calls stay COMPLETED)."""
    async with serving(create_asgi(signed)) as address:
        yield f"ws://{address}/v1/call/audiohook"


async def peer(url: str) -> AudioHookPeer:
    return await AudioHookPeer.connect(url, INGEST_KEY, SECRET)


async def nothing_stored(redis: Redis, call_id: str) -> bool:
    keys = call_keys(call_id)
    return int(await redis.exists(keys.meta, keys.metadata, keys.feeds, keys.done)) == 0


def interleaved(external: bytes, internal: bytes) -> bytes:
    """μ-law of both parties as AudioHook sends it: external, internal, sample by sample."""
    length = max(len(external), len(internal))
    both = np.full((length, 2), 0xFF, dtype=np.uint8)  # μ-law's zero pads the shorter
    both[: len(external), 0] = np.frombuffer(external, dtype=np.uint8)
    both[: len(internal), 1] = np.frombuffer(internal, dtype=np.uint8)
    return both.tobytes()


@needs_espeak
async def test_a_conversation_with_a_pause_ends_archived_with_each_party_on_its_timeline(
    signed: Settings,
):
    conversation = str(uuid.uuid4())
    caller, agent = spoken_mulaw(CALLER_SAYS), spoken_mulaw(AGENT_SAYS)
    audio = interleaved(caller, agent)
    half = len(audio) // 2 // 1600 * 1600  # a whole number of 100 ms frames
    async with callstream(signed) as (address, http):
        http.headers["X-API-Key"] = "reader-1"
        genesys = await peer(f"ws://{address}/v1/call/audiohook")
        opened = await genesys.open(conversation)
        assert opened["type"] == "opened"
        assert opened["parameters"]["media"][0]["channels"] == ["external", "internal"]
        assert (opened["seq"], opened["clientseq"], opened["id"]) == (1, 1, genesys.session_id)
        await genesys.send_audio(audio[:half])
        await genesys.send("ping", {})
        assert (await genesys.receive())["type"] == "pong"
        await genesys.pause(1.0)  # a secure pause: a second not sent
        await genesys.send_audio(audio[half:])
        await genesys.send("update", {"language": "fr-FR"})
        assert (await genesys.receive())["type"] == "updated"
        closed = await genesys.close()
        assert (closed["type"], closed["clientseq"]) == ("closed", genesys.seq)
        status = await wait_state(http, conversation, "ARCHIVED")
        assert status["state"] == "ARCHIVED", status
        rate, left, right = await stereo(http, conversation)
        await assert_both_speakers(http, conversation)
    assert rate == 8000
    paused = np.zeros(8000, dtype=np.int16)
    for channel, party in ((left, CALLER_SAYS), (right, AGENT_SAYS)):
        said = spoken(party)
        said = np.concatenate([said, np.zeros(len(audio) // 2 - len(said), dtype=np.int16)])
        cut = half // 2
        assert_channel_holds(channel, np.concatenate([said[:cut], paused, said[cut:]]), offset=0)
    for track in ("inbound", "outbound"):
        assert status["tracks"][track]["missing_count"] == 50  # the pause: 50 frames unsent
    assert status["metadata"]["audiohook"]["conversationId"] == conversation


async def test_an_unsigned_or_wrongly_signed_or_stale_upgrade_is_refused_401(
    url: str, redis: Redis
):
    attempts: list[dict[str, Any]] = [
        {"secret": None},  # unsigned
        {"secret": b"another secret"},
        {"created": int(time.time()) - 120},  # stale
        {"sign_as": "evil.example.com"},  # signed for another host
    ]
    for options in attempts:
        with pytest.raises(InvalidStatus) as refused:
            await AudioHookPeer.connect(url, INGEST_KEY, **{"secret": SECRET, **options})
        response = refused.value.response
        assert response.status_code == 401, options
        problem = json.loads(response.body or b"{}")
        assert problem["code"] == "unauthenticated"
        assert "AudioHook signature" in problem["detail"]


async def test_a_wrong_or_missing_key_is_refused_at_the_upgrade(url: str):
    with pytest.raises(InvalidStatus) as wrong:
        await AudioHookPeer.connect(url, "not-a-key", SECRET)
    assert wrong.value.response.status_code == 401  # the gate's answer: an unknown key
    with pytest.raises(InvalidStatus) as missing:
        await AudioHookPeer.connect(url, "", SECRET)
    assert missing.value.response.status_code == 401


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("seq", "sequence_gap"),
        ("id", "session_mismatch"),
        ("size", "message_too_large"),
        ("audio", "audio_outside_open"),
    ],
)
async def test_a_protocol_fault_gets_disconnect_error_and_keeps_what_was_stored(
    url: str, redis: Redis, fault: str, code: str
):
    conversation = str(uuid.uuid4())
    genesys = await peer(url)
    if fault == "audio":
        await genesys.send_audio(bytes(1600))  # before open
    else:
        await genesys.open(conversation)
        await genesys.send_audio(bytes(1600 * 3))  # 300 ms: 15 frames a party
        assert await settled(redis, conversation, 30, "IN_PROGRESS") == (30, "IN_PROGRESS")
        if fault == "seq":
            await genesys.send("ping", {}, seq=genesys.seq + 2)
        elif fault == "id":
            genesys.session_id = str(uuid.uuid4())
            await genesys.send("ping", {})
        else:
            await genesys.send("update", {"language": "x" * 70_000})
    disconnect = await genesys.receive()
    assert disconnect["type"] == "disconnect"
    assert disconnect["parameters"]["reason"] == "error"
    assert disconnect["parameters"]["info"].startswith(code)
    assert (await closing(genesys.ws))[0] == 1008
    if fault == "audio":
        assert await nothing_stored(redis, conversation)
    else:
        assert await settled(redis, conversation, 30, "COMPLETED") == (30, "COMPLETED")


async def test_an_open_without_media_we_take_is_opened_without_media(url: str, redis: Redis):
    conversation = str(uuid.uuid4())
    genesys = await peer(url)
    l16 = {"type": "audio", "format": "L16", "channels": ["external"], "rate": 16000}
    opened = await genesys.open(conversation, [l16])
    assert opened["parameters"] == {"media": []}
    assert (await genesys.close())["type"] == "closed"
    assert await nothing_stored(redis, conversation)


async def test_one_party_alone_is_taken_when_both_are_not_offered(url: str, redis: Redis):
    conversation = str(uuid.uuid4())
    genesys = await peer(url)
    agent_only = {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}
    opened = await genesys.open(conversation, [agent_only])
    assert opened["parameters"]["media"] == [agent_only]
    await genesys.send_audio(bytes(1600), channels=1)  # 200 ms
    await genesys.close()
    assert await settled(redis, conversation, 10, "COMPLETED") == (10, "COMPLETED")
    entries = await redis.xrange(call_keys(conversation).packets)
    assert {fields[b"k"] for _, fields in entries} == {b"1"}  # the outbound track


async def test_a_dropped_session_keeps_its_audio_and_completes_the_call(url: str, redis: Redis):
    conversation = str(uuid.uuid4())
    genesys = await peer(url)
    await genesys.open(conversation)
    await genesys.send_audio(bytes(1600 * 2))
    assert await settled(redis, conversation, 20, "IN_PROGRESS") == (20, "IN_PROGRESS")
    genesys.ws.transport.abort()
    assert await settled(redis, conversation, 20, "COMPLETED") == (20, "COMPLETED")
