"""Asterisk chan_websocket at /v1/call/asterisk, against a real uvicorn, Redis, PostgreSQL and
arq worker, with a peer that speaks it as Asterisk does (simulate/pbx.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from websockets.exceptions import InvalidStatus

from db.keys import call_keys
from service.app import create_asgi
from service.feeds import asterisk_ws
from service.feeds import session as session_module
from settings import Settings
from simulate.pbx import AsteriskWebSocketPeer, closing
from tests.batches import script_batches
from tests.conftest import make_settings
from tests.feeds.calls import (
    AGENT_SAYS,
    CALLER_SAYS,
    assert_both_speakers,
    assert_channel_holds,
    assert_track_counts,
    callstream,
    feeds_open,
    frames_for,
    needs_espeak,
    settled,
    spoken,
    spoken_mulaw,
    stereo,
    wait_state,
)
from tests.serving import serving

INGEST_KEY = "ingest-pbx-1"


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[str]:
    """The API without a worker (calls stay COMPLETED)."""
    async with serving(create_asgi(settings)) as address:
        yield f"ws://{address}/v1/call/asterisk"


@pytest.fixture
def keyed(server_urls: tuple[str, str]) -> Settings:
    db_url, redis_url = server_urls
    return make_settings(db_url, redis_url, ingest_api_keys=SecretStr(INGEST_KEY),
                         supervisor_api_keys=SecretStr("reader-1"))  # fmt: skip


async def opened(redis: Redis, call_id: str) -> bool:
    """Whether a feed has opened the call (its metadata stored), within 5 s."""
    deadline = asyncio.get_running_loop().time() + 5
    while not await redis.exists(call_keys(call_id).metadata):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def stored(redis: Redis, call_id: str, packets: int) -> None:
    """Wait (10 s at most) until the call's stream holds `packets` packets."""
    deadline = asyncio.get_running_loop().time() + 10
    while await redis.xlen(call_keys(call_id).packets) < packets:
        assert asyncio.get_running_loop().time() < deadline, "not stored within 10 s"
        await asyncio.sleep(0.02)


async def nothing_stored(redis: Redis, call_id: str) -> bool:
    keys = call_keys(call_id)
    return int(await redis.exists(keys.meta, keys.metadata, keys.feeds, keys.done)) == 0


@needs_espeak
async def test_two_channels_of_one_call_id_end_archived_with_each_party_in_its_channel(
    keyed: Settings, redis: Redis
):
    call_id = "1733480000.42"
    caller, agent = spoken_mulaw(CALLER_SAYS), spoken_mulaw(AGENT_SAYS)
    async with callstream(keyed) as (address, http):
        http.headers["X-API-Key"] = "reader-1"
        url = f"ws://{address}/v1/call/asterisk"
        inbound = await AsteriskWebSocketPeer.connect(url, {"call_id": call_id}, INGEST_KEY)
        outbound = await AsteriskWebSocketPeer.connect(
            url, {"call_id": call_id, "track": "outbound"}, INGEST_KEY
        )
        for peer in (inbound, outbound):  # what Asterisk checks of the answer
            assert peer.ws.subprotocol == "media"
            assert peer.ws.response is not None
            assert "Sec-WebSocket-Extensions" not in peer.ws.response.headers
        await inbound.media_start("1733480000.43")  # plain text
        # The first channel to open the call names it (its metadata becomes the call's): the
        # outbound one starts once the inbound one has opened it, so which is first is fixed.
        assert await opened(redis, call_id)
        await outbound.media_start("1733480000.44", as_json=True)  # JSON (20.18+)
        assert await feeds_open(redis, call_id, 2) == 2
        await asyncio.gather(inbound.send_audio(caller, 160), outbound.send_audio(agent, 160))
        await inbound.ws.send("DTMF_END digit:5 channel_id:1733480000.43")  # ignored
        assert await inbound.close() == (1000, "")
        assert await opened(redis, call_id)
        await outbound.close()
        status = await wait_state(http, call_id, "ARCHIVED")
        assert status["state"] == "ARCHIVED", status
        rate, left, right = await stereo(http, call_id)
        await assert_both_speakers(http, call_id)
    assert rate == 8000
    assert_channel_holds(left, spoken(CALLER_SAYS))  # μ-law decoded: sample-exact after G.711
    assert_channel_holds(right, spoken(AGENT_SAYS))
    assert_track_counts(status, frames_for(len(caller)), frames_for(len(agent)))
    assert status["metadata"]["transport"] == "asterisk"
    assert status["metadata"]["asterisk"]["channel_id"] == "1733480000.43"


@pytest.mark.parametrize(
    ("key", "status", "why"),
    [(None, 401, "no key"), ("nope", 401, "an unknown key"),
     ("reader-1", 403, "a key of another role")],
)  # fmt: skip
async def test_a_bad_or_missing_key_is_refused_at_the_handshake(
    keyed: Settings, redis: Redis, key: str | None, status: int, why: str
):
    async with serving(create_asgi(keyed)) as address:
        with pytest.raises(InvalidStatus) as refused:
            await AsteriskWebSocketPeer.connect(
                f"ws://{address}/v1/call/asterisk", {"call_id": "AST-KEY"}, key
            )
    assert refused.value.response.status_code == status, why
    assert await nothing_stored(redis, "AST-KEY")


async def test_the_channel_id_is_the_call_id_without_one_in_the_query(api: str, redis: Redis):
    peer = await AsteriskWebSocketPeer.connect(api)
    await peer.media_start("1733480001.7", fmt="slin16", frame_size=640)
    await peer.send_audio(bytes(640 * 3), 640)
    assert await peer.close() == (1000, "")
    assert await settled(redis, "1733480001.7", 3, "COMPLETED") == (3, "COMPLETED")
    meta = await redis.get(call_keys("1733480001.7").metadata)
    assert b'"sampleRate":16000' in meta


async def test_media_before_media_start_is_a_policy_violation_and_stores_nothing(
    api: str, redis: Redis
):
    peer = await AsteriskWebSocketPeer.connect(api, {"call_id": "AST-EARLY"})
    await peer.send_audio(bytes(160), 160)
    code, reason = await closing(peer.ws)
    assert (code, reason.split(":")[0]) == (1008, "not_started")
    assert await nothing_stored(redis, "AST-EARLY")


async def test_an_unknown_format_is_refused_and_stores_nothing(api: str, redis: Redis):
    peer = await AsteriskWebSocketPeer.connect(api, {"call_id": "AST-G722"})
    await peer.media_start("1.1", fmt="g722")
    await peer.send_audio(bytes(160), 160)
    code, reason = await closing(peer.ws)
    assert code == 1003
    assert reason.startswith("unsupported_format: format 'g722'")
    assert await nothing_stored(redis, "AST-G722")


async def test_a_bad_track_is_refused(api: str, redis: Redis):
    peer = await AsteriskWebSocketPeer.connect(api, {"call_id": "AST-TRACK", "track": "both"})
    await peer.media_start("1.2")
    code, reason = await closing(peer.ws)
    assert (code, reason.split(":")[0]) == (1008, "invalid_track")
    assert await nothing_stored(redis, "AST-TRACK")


async def test_a_socket_dropped_mid_call_keeps_its_audio_and_the_call_completes(
    api: str, redis: Redis
):
    inbound = await AsteriskWebSocketPeer.connect(api, {"call_id": "AST-DROP"})
    outbound = await AsteriskWebSocketPeer.connect(
        api, {"call_id": "AST-DROP", "track": "outbound"}
    )
    for peer in (inbound, outbound):
        await peer.media_start("1.3")
        await peer.send_audio(bytes(160 * 10), 160)
    assert await settled(redis, "AST-DROP", 20, "IN_PROGRESS") == (20, "IN_PROGRESS")
    inbound.ws.transport.abort()  # the connection lost: no close frame
    await outbound.send_audio(bytes(160 * 5), 160)
    # The agent's feed is still open: the call goes on without the caller's.
    assert await settled(redis, "AST-DROP", 25, "IN_PROGRESS") == (25, "IN_PROGRESS")
    assert await outbound.close() == (1000, "")
    assert await settled(redis, "AST-DROP", 25, "COMPLETED") == (25, "COMPLETED")


async def test_the_channels_of_a_process_store_their_held_audio_in_one_round_trip(
    api: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    # A feed holds its packets to the end of the process' hold window (streaming.store_at), as
    # a media stream does: the two channels of a call (two sockets) store together, one
    # pipelined round trip for both, not one each.
    batches = script_batches(monkeypatch)
    peers = [
        await AsteriskWebSocketPeer.connect(api, {"call_id": "batched", "track": track})
        for track in ("inbound", "outbound")
    ]
    try:
        for peer in peers:
            await peer.media_start("batched")
        assert await feeds_open(redis, "batched", 2) == 2
        await peers[0].send_audio(bytes(160), 160)  # a first store: the backlog is read
        await stored(redis, "batched", 1)
        window_ends = asyncio.get_running_loop().time() + 1.0
        monkeypatch.setattr(session_module, "store_at", lambda held_since: window_ends)
        batches.clear()
        for peer in peers:
            await peer.send_audio(bytes(160), 160)  # a 20 ms frame of silence each
        await stored(redis, "batched", 3)
    finally:
        for peer in peers:
            await peer.close()
    assert batches[0] == 2  # both channels' stores in the first round trip after the window


@pytest.fixture
async def quick_idle(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    """The API with an idle timeout of 0.5 s."""
    db_url, redis_url = server_urls
    settings = make_settings(db_url, redis_url, ws_idle_timeout_s=0.5)
    async with serving(create_asgi(settings)) as address:
        yield f"ws://{address}/v1/call/asterisk"


async def test_audio_is_taken_as_it_is_read_without_waking_the_feed_s_task(
    api: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    # Under `make run`'s WebSocket protocol (tests/serving.py serves with it) a channel's binary
    # frames go to the feed's audio path as they are read; its handler meets the text messages.
    handled: list[object] = []
    handle = asterisk_ws.AsteriskFeed.handle

    async def counted(feed: asterisk_ws.AsteriskFeed, frame: object) -> bool:
        handled.append(frame)
        return await handle(feed, frame)

    monkeypatch.setattr(asterisk_ws.AsteriskFeed, "handle", counted)
    peer = await AsteriskWebSocketPeer.connect(api, {"call_id": "AST-SINK"})
    await peer.media_start("2.1")
    assert await opened(redis, "AST-SINK")
    await asyncio.sleep(0.2)  # the MEDIA_START handled: the sink is open again
    for n in range(40):
        await peer.send_audio(bytes([n]) * 160, 160)
    await peer.ws.send("DTMF_END digit:1")
    await stored(redis, "AST-SINK", 40)
    assert await peer.close() == (1000, "")
    assert [type(f) for f in handled] == [str, str]  # MEDIA_START and DTMF_END only
    entries = await redis.xrange(call_keys("AST-SINK").packets)
    assert len(entries) == 40


async def test_a_channel_whose_audio_flows_past_the_idle_timeout_stays_open(
    quick_idle: str, redis: Redis
):
    # Audio taken as it is read never reaches the feed's task one frame at a time: what it
    # stores a window at a time must still count as the channel being alive.
    peer = await AsteriskWebSocketPeer.connect(quick_idle, {"call_id": "AST-ALIVE"})
    await peer.media_start("2.2")
    for _ in range(60):  # 1.2 s at real-time pace, past the 0.5 s idle timeout
        await peer.send_audio(bytes(160), 160)
        await asyncio.sleep(0.02)
    await stored(redis, "AST-ALIVE", 60)
    assert await peer.close() == (1000, "")


async def test_a_channel_gone_quiet_is_closed_going_away_with_its_audio_stored(
    quick_idle: str, redis: Redis
):
    peer = await AsteriskWebSocketPeer.connect(quick_idle, {"call_id": "AST-QUIET"})
    await peer.media_start("2.3")
    await peer.send_audio(bytes(160 * 5), 160)
    code, reason = await closing(peer.ws)
    assert (code, reason.split(":")[0]) == (1001, "idle_timeout")
    assert await settled(redis, "AST-QUIET", 5, "COMPLETED") == (5, "COMPLETED")
