"""Asterisk AudioSocket against the real listeners (in the API's lifespan), Redis, PostgreSQL and
an arq worker, with a peer that speaks the protocol byte for byte (simulate/pbx.py)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import cast

import numpy as np
import pytest
import uvloop
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from core.audio import mulaw_encode
from core.ingestion import Ingestion
from db.keys import call_keys
from devstack.servers import free_port
from service.app import create_app
from service.feeds import audiosocket
from service.feeds import session as session_module
from service.feeds.audiosocket import start_listeners
from service.streaming import READ_AHEAD, append_or_pause
from settings import Settings, host_port
from simulate.pbx import (
    AS_AUDIO,
    AS_DTMF,
    AS_ERROR,
    AS_SLIN_KINDS,
    AudioSocketPeer,
    audiosocket_message,
)
from tests.conftest import make_settings
from tests.feeds.calls import (
    AGENT_SAYS,
    CALLER_SAYS,
    assert_both_speakers,
    assert_channel_holds,
    assert_track_counts,
    call_state,
    callstream,
    feeds_open,
    frames_for,
    needs_espeak,
    settled,
    slin,
    spoken,
    spoken_mulaw,
    stereo,
    stored_packets,
    wait_state,
)
from tests.serving import serving

ERROR = bytes([AS_ERROR, 0, 0])  # how the listener ends a session it refuses
FRAME = 320  # 20 ms of 8 kHz slin, as Asterisk sends it


@pytest.fixture
def pbx(server_urls: tuple[str, str]) -> Settings:
    db_url, redis_url = server_urls
    return make_settings(
        db_url,
        redis_url,
        audiosocket_addr=f"127.0.0.1:{free_port()}",
        audiosocket_outbound_addr=f"127.0.0.1:{free_port()}",
    )


async def peer(address: str) -> AudioSocketPeer:
    return await AudioSocketPeer.connect(*host_port(address))


@pytest.fixture
async def listening(pbx: Settings) -> AsyncIterator[Settings]:
    """The API's AudioSocket listeners, without a worker (calls stay COMPLETED)."""
    async with serving(create_app(pbx)):
        yield pbx


async def nothing_stored(redis: Redis, call_id: str) -> bool:
    keys = call_keys(call_id)
    return int(await redis.exists(keys.meta, keys.metadata, keys.feeds, keys.done)) == 0


@needs_espeak
async def test_a_two_party_call_over_both_listeners_ends_archived_with_each_party_in_its_channel(
    pbx: Settings, redis: Redis
):
    call = uuid.uuid4()
    caller, agent = spoken(CALLER_SAYS), spoken(AGENT_SAYS)
    async with callstream(pbx) as (_, http):
        inbound = await peer(pbx.audiosocket_addr)
        outbound = await peer(pbx.audiosocket_outbound_addr)
        for party in (inbound, outbound):
            await party.send_uuid(call)
        assert await feeds_open(redis, str(call), 2) == 2
        # Both parties talk at once, as on a call: frames of each, interleaved in time.
        await asyncio.gather(
            inbound.send_audio(slin(caller), FRAME), outbound.send_audio(slin(agent), FRAME)
        )
        await inbound.hangup()
        await outbound.send(audiosocket_message(AS_DTMF, b"5"))  # a digit: accepted, not kept
        assert await wait_state(http, str(call), "IN_PROGRESS", 5)  # the agent is still on
        await outbound.close()  # Asterisk ends a call by closing the socket
        for party in (inbound, outbound):
            await party.close()
        status = await wait_state(http, str(call), "ARCHIVED")
        assert status["state"] == "ARCHIVED", status
        rate, left, right = await stereo(http, str(call))
        await assert_both_speakers(http, str(call))
    assert rate == 8000
    assert_channel_holds(left, caller)
    assert_channel_holds(right, agent)
    assert_track_counts(status, frames_for(len(caller)), frames_for(len(agent)))
    assert status["metadata"]["transport"] == "audiosocket"
    assert status["metadata"]["mediaFormat"]["encoding"] == "audio/L16"


@needs_espeak
async def test_ulaw_from_the_channel_driver_is_stored_as_sent(server_urls: tuple[str, str]):
    db_url, redis_url = server_urls
    ulaw = make_settings(db_url, redis_url, audiosocket_addr=f"127.0.0.1:{free_port()}",
                         audiosocket_format="ulaw")  # fmt: skip
    call = uuid.uuid4()
    audio = spoken_mulaw(CALLER_SAYS)
    async with callstream(ulaw) as (_, http):
        party = await peer(ulaw.audiosocket_addr)
        await party.send_uuid(call)
        await party.send_audio(audio, 160)
        await party.hangup()
        assert await party.answer() == b""  # a clean end: closed, no error
        status = await wait_state(http, str(call), "ARCHIVED")
        assert status["metadata"]["mediaFormat"]["encoding"] == "audio/x-mulaw"
        response = await http.get(f"/v1/calls/{call}/audio")
    assert response.status_code == 200
    # Mono, 16-bit: the μ-law decoded; encoded again it is exactly the bytes sent.
    pcm = response.content[44:]
    assert mulaw_encode(np.frombuffer(pcm, dtype="<i2")) == audio


async def test_a_higher_rate_kind_sets_the_calls_rate(listening: Settings, redis: Redis):
    call = uuid.uuid4()
    party = await peer(listening.audiosocket_addr)
    await party.send_uuid(call)
    await party.send_audio(bytes(640 * 5), 640, AS_SLIN_KINDS[16000])  # 100 ms of slin16
    await party.hangup()
    assert await party.answer() == b""
    meta = await redis.get(call_keys(str(call)).metadata)
    assert b'"sampleRate":16000' in meta
    assert await stored_packets(redis, str(call)) == 5


@pytest.mark.parametrize(
    ("messages", "why"),
    [
        ([audiosocket_message(AS_AUDIO, bytes(320))], "audio before the UUID"),
        ([audiosocket_message(0x01, bytes(15))], "a UUID that is not 16 bytes"),
        ([audiosocket_message(0x42, b"x")], "an unknown kind"),
        ([bytes([AS_AUDIO, 0xFF, 0xFF])], "a length past the cap"),
        ([audiosocket_message(AS_SLIN_KINDS[96000], bytes(320))], "a rate we cannot store"),
    ],
)
async def test_a_malformed_session_start_is_ended_with_an_error_and_stores_nothing(
    listening: Settings, redis: Redis, messages: list[bytes], why: str
):
    call = uuid.uuid4()
    party = await peer(listening.audiosocket_addr)
    if why not in ("audio before the UUID", "a UUID that is not 16 bytes"):
        await party.send_uuid(call)
    for message in messages:
        await party.send(message)
    assert await party.answer() == ERROR, why
    assert await nothing_stored(redis, str(call))


async def test_a_refusal_mid_call_keeps_what_was_stored_and_completes_the_call(
    listening: Settings, redis: Redis
):
    call = uuid.uuid4()
    counted = {"transport": "audiosocket", "outcome": "unknown_kind"}
    before = REGISTRY.get_sample_value("callstream_feed_sessions_total", counted) or 0
    party = await peer(listening.audiosocket_addr)
    await party.send_uuid(call)
    await party.send_audio(bytes(range(256)) * 5, FRAME)  # 1,280 bytes: 4 frames
    await party.send(audiosocket_message(0x42, b"?"))
    assert await party.answer() == ERROR
    assert await stored_packets(redis, str(call)) == 4
    assert await call_state(redis, str(call)) == "COMPLETED"
    after = REGISTRY.get_sample_value("callstream_feed_sessions_total", counted)
    assert after == before + 1  # the metrics say how each session ended


async def test_audio_that_changes_format_mid_call_is_refused(listening: Settings, redis: Redis):
    call = uuid.uuid4()
    party = await peer(listening.audiosocket_addr)
    await party.send_uuid(call)
    await party.send_audio(bytes(FRAME), FRAME)
    await party.send_audio(bytes(640), 640, AS_SLIN_KINDS[16000])
    assert await party.answer() == ERROR
    assert await stored_packets(redis, str(call)) == 1


async def test_a_socket_dropped_mid_call_keeps_its_audio_and_the_call_completes_with_the_other(
    listening: Settings, redis: Redis
):
    call = uuid.uuid4()
    inbound = await peer(listening.audiosocket_addr)
    outbound = await peer(listening.audiosocket_outbound_addr)
    for party in (inbound, outbound):
        await party.send_uuid(call)
    assert await feeds_open(redis, str(call), 2) == 2
    for party in (inbound, outbound):
        await party.send_audio(bytes(FRAME * 10), FRAME)
    assert await settled(redis, str(call), 20, "IN_PROGRESS") == (20, "IN_PROGRESS")
    inbound.drop()  # a reset: no hang-up, no goodbye
    await outbound.send_audio(bytes(FRAME * 5), FRAME)
    # The agent's feed is still open: the call goes on without the caller's.
    assert await settled(redis, str(call), 25, "IN_PROGRESS") == (25, "IN_PROGRESS")
    await outbound.hangup()
    assert await outbound.answer() == b""
    assert await call_state(redis, str(call)) == "COMPLETED"
    assert await stored_packets(redis, str(call)) == 25


async def test_a_peer_outside_audiosocket_allow_is_closed_at_once(
    server_urls: tuple[str, str], redis: Redis
):
    db_url, redis_url = server_urls
    elsewhere = make_settings(db_url, redis_url, audiosocket_addr=f"127.0.0.1:{free_port()}",
                              audiosocket_allow="10.0.0.0/8")  # fmt: skip
    call = uuid.uuid4()
    async with serving(create_app(elsewhere)):
        party = await peer(elsewhere.audiosocket_addr)
        # Closed as the connection is made: the peer's writes may meet the reset already.
        with contextlib.suppress(ConnectionError):
            await party.send_uuid(call)
            await party.send_audio(bytes(FRAME * 3), FRAME)
        assert await party.answer() == b""  # closed, nothing said, nothing read
    assert await nothing_stored(redis, str(call))


async def test_a_listener_beyond_loopback_without_audiosocket_allow_refuses_to_start(
    server_urls: tuple[str, str],
):
    db_url, redis_url = server_urls
    exposed = make_settings(db_url, redis_url, audiosocket_addr=f"0.0.0.0:{free_port()}")
    with pytest.raises(RuntimeError, match=r"not on loopback.*set AUDIOSOCKET_ALLOW"):
        await start_listeners(exposed, cast(Ingestion, None))  # refused before any is used


async def test_a_second_party_in_another_format_is_refused_and_the_first_goes_on(
    listening: Settings, redis: Redis
):
    call = uuid.uuid4()
    inbound = await peer(listening.audiosocket_addr)
    outbound = await peer(listening.audiosocket_outbound_addr)
    for party in (inbound, outbound):
        await party.send_uuid(call)
    assert await feeds_open(redis, str(call), 2) == 2
    await inbound.send_audio(bytes(FRAME * 2), FRAME)  # slin 8 kHz opens the call
    assert await settled(redis, str(call), 2, "IN_PROGRESS") == (2, "IN_PROGRESS")
    await outbound.send_audio(bytes(640), 640, AS_SLIN_KINDS[16000])
    assert await outbound.answer() == ERROR  # format_mismatch
    await inbound.send_audio(bytes(FRAME), FRAME)
    await inbound.hangup()
    assert await inbound.answer() == b""
    assert await settled(redis, str(call), 3, "COMPLETED") == (3, "COMPLETED")


async def test_redis_unavailable_ends_the_session_with_an_error(server_urls: tuple[str, str]):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    down = make_settings(server_urls[0], dead_redis, redis_timeout_s=0.2,
                         audiosocket_addr=f"127.0.0.1:{free_port()}")  # fmt: skip
    async with serving(create_app(down)):
        party = await peer(down.audiosocket_addr)
        await party.send_uuid(uuid.uuid4())
        await party.send_audio(bytes(FRAME), FRAME)
        assert await party.answer() == ERROR


async def test_messages_joined_or_split_across_tcp_writes_are_read_alike(
    listening: Settings, redis: Redis
):
    call = uuid.uuid4()
    party = await peer(listening.audiosocket_addr)
    stream = b"".join(
        [audiosocket_message(0x01, call.bytes)]
        + [audiosocket_message(AS_AUDIO, bytes([n]) * FRAME) for n in range(6)]
        + [audiosocket_message(0x00)]
    )
    await party.send(stream[:2])  # inside the first header
    await party.send(stream[2:400])  # the rest of the UUID, and half a message
    await party.send(stream[400:])  # everything else at once
    assert await party.answer() == b""
    assert await settled(redis, str(call), 6, "COMPLETED") == (6, "COMPLETED")
    entries = await redis.xrange(call_keys(str(call)).packets)
    assert [int(fields[b"s"]) for _, fields in entries] == list(range(6))


async def test_audio_is_taken_as_it_is_read_without_waking_the_session_s_task(
    listening: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    # Once the call is open, its audio goes to the feed as the connection reads it (its sink:
    # FeedSession.read_audio_from); the session's handler meets every other message, in order.
    kinds: list[int] = []
    handle = audiosocket.AudioSocketSession.handle

    async def counted(session: audiosocket.AudioSocketSession, message: object) -> bool:
        if isinstance(message, audiosocket.Message):
            kinds.append(message.kind)
        return await handle(session, message)

    monkeypatch.setattr(audiosocket.AudioSocketSession, "handle", counted)
    call = uuid.uuid4()
    party = await peer(listening.audiosocket_addr)
    await party.send_uuid(call)
    await party.send_audio(bytes(FRAME), FRAME)  # opens the call, through the handler
    assert await settled(redis, str(call), 1, "IN_PROGRESS") == (1, "IN_PROGRESS")
    await asyncio.sleep(0.2)  # that message handled: the sink takes the next ones
    await party.send_audio(b"".join(bytes([n]) * FRAME for n in range(40)), FRAME)
    await party.send(audiosocket_message(AS_DTMF, b"5"))
    await party.hangup()
    assert await party.answer() == b""
    assert kinds == [0x01, AS_AUDIO, AS_DTMF, 0x00]
    assert await settled(redis, str(call), 41, "COMPLETED") == (41, "COMPLETED")
    entries = await redis.xrange(call_keys(str(call)).packets)
    assert [int(fields[b"s"]) for _, fields in entries] == list(range(41))


@pytest.fixture
async def quick_idle(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    """The caller's listener's address, with an idle timeout of 0.5 s."""
    db_url, redis_url = server_urls
    quick = make_settings(db_url, redis_url, audiosocket_addr=f"127.0.0.1:{free_port()}",
                          ws_idle_timeout_s=0.5)  # fmt: skip
    async with serving(create_app(quick)):
        yield quick.audiosocket_addr


async def test_audio_flowing_past_the_idle_timeout_keeps_the_session_open(
    quick_idle: str, redis: Redis
):
    # Audio taken as it is read never reaches the session's task a message at a time: what it
    # stores a window at a time must still count as the session being alive.
    call = uuid.uuid4()
    party = await peer(quick_idle)
    await party.send_uuid(call)
    for _ in range(60):  # 1.2 s at real-time pace, past the 0.5 s idle timeout
        await party.send_audio(bytes(FRAME), FRAME)
        await asyncio.sleep(0.02)
    await party.hangup()
    assert await party.answer() == b""  # a hang-up, not the idle timeout's
    assert await settled(redis, str(call), 60, "COMPLETED") == (60, "COMPLETED")


async def test_a_session_gone_quiet_is_hung_up_with_its_audio_stored(quick_idle: str, redis: Redis):
    call = uuid.uuid4()
    party = await peer(quick_idle)
    await party.send_uuid(call)
    await party.send_audio(bytes(FRAME * 5), FRAME)
    assert await party.answer() == bytes([0x00, 0, 0])  # AudioSocket's hang-up
    assert await settled(redis, str(call), 5, "COMPLETED") == (5, "COMPLETED")


def test_a_call_under_make_run_s_event_loop_is_stored_whole(pbx: Settings):
    # `make run` serves on uvloop, whose transports are not asyncio's classes: the listener's
    # connections must not depend on them (the suite's other tests run on asyncio's loop).
    call = uuid.uuid4()

    async def a_call() -> tuple[bytes, tuple[int, str | None]]:
        redis = Redis.from_url(pbx.redis_url)
        try:
            async with serving(create_app(pbx)):
                party = await peer(pbx.audiosocket_addr)
                await party.send_uuid(call)
                for n in range(30):
                    await party.send_audio(bytes([n]) * FRAME, FRAME)
                    await asyncio.sleep(0.02)
                await party.hangup()
                answer = await party.answer()
                return answer, await settled(redis, str(call), 30, "COMPLETED")
        finally:
            await redis.aclose()

    assert uvloop.run(a_call()) == (b"", (30, "COMPLETED"))


async def test_a_fast_peer_is_held_back_while_a_store_is_in_flight_and_nothing_is_lost(
    listening: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    # While a store waits (Redis slow), the sink takes what one store holds, the connection
    # queues READ_AHEAD messages and then stops reading: what is held stays bounded, and once
    # the store goes through every message is stored, in order.
    release = asyncio.Event()
    append = append_or_pause
    queued = 0

    async def slow(*args: object) -> None:
        await release.wait()
        await append(*args)  # type: ignore[arg-type]

    put = audiosocket.AudioSocketConnection._put

    def counted(connection: audiosocket.AudioSocketConnection, message: object) -> None:
        nonlocal queued
        put(connection, message)
        queued = max(queued, len(connection._messages))

    monkeypatch.setattr(session_module, "append_or_pause", slow)
    monkeypatch.setattr(audiosocket.AudioSocketConnection, "_put", counted)
    call = uuid.uuid4()
    party = await peer(listening.audiosocket_addr)
    await party.send_uuid(call)
    frames = 1500  # 30 s of audio at once, past what the server holds in memory
    await party.send_audio(b"".join(bytes([n % 256]) * FRAME for n in range(frames)), FRAME)
    await asyncio.sleep(0.5)  # the first store waits; the rest is read as far as allowed
    assert queued <= READ_AHEAD
    release.set()
    await party.hangup()
    assert await party.answer() == b""
    assert await settled(redis, str(call), frames, "COMPLETED") == (frames, "COMPLETED")
    entries = await redis.xrange(call_keys(str(call)).packets)
    assert [int(fields[b"s"]) for _, fields in entries] == list(range(frames))
