"""FreeSWITCH mod_audio_stream / mod_audio_fork at /v1/call/freeswitch, against a real uvicorn,
Redis, PostgreSQL and arq worker, with a peer that streams as FreeSWITCH does (simulate/pbx.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from websockets.exceptions import InvalidStatus

from core.audio import resample
from db.keys import call_keys
from devstack.servers import free_port
from service.app import create_asgi
from settings import Settings
from simulate.pbx import FreeSwitchPeer, closing
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
    slin,
    spoken,
    stereo,
    wait_state,
)
from tests.serving import serving

INGEST_KEY = "ingest-fs-1"


@pytest.fixture
def keyed(server_urls: tuple[str, str]) -> Settings:
    db_url, redis_url = server_urls
    return make_settings(db_url, redis_url, ingest_api_keys=SecretStr(INGEST_KEY),
                         supervisor_api_keys=SecretStr("reader-1"))  # fmt: skip


@pytest.fixture
async def url(keyed: Settings) -> AsyncIterator[str]:
    """The API with keys on, without a worker (calls stay COMPLETED)."""
    async with serving(create_asgi(keyed)) as address:
        yield f"ws://{address}/v1/call/freeswitch"


async def nothing_stored(redis: Redis, call_id: str) -> bool:
    keys = call_keys(call_id)
    return int(await redis.exists(keys.meta, keys.metadata, keys.feeds, keys.done)) == 0


def interleaved(left: np.ndarray, right: np.ndarray) -> bytes:
    """Two parties as mod_audio_stream's `stereo` sends them: caller left, callee right."""
    length = max(len(left), len(right))
    both = np.zeros((length, 2), dtype=np.int16)
    both[: len(left), 0], both[: len(right), 1] = left, right
    return slin(both.reshape(-1))


@needs_espeak
async def test_a_stereo_stream_at_16k_ends_archived_with_the_caller_left_and_the_agent_right(
    keyed: Settings,
):
    caller = resample(spoken(CALLER_SAYS), 8000, 16000)
    agent = resample(spoken(AGENT_SAYS), 8000, 16000)
    length = max(len(caller), len(agent))
    async with callstream(keyed) as (address, http):
        http.headers["X-API-Key"] = "reader-1"
        query = {"call_id": "the-metadata-wins", "rate": "16000"}
        peer = await FreeSwitchPeer.connect(f"ws://{address}/v1/call/freeswitch", query)
        assert peer.ws.response is not None  # mod_audio_stream's compression, accepted
        assert "permessage-deflate" in peer.ws.response.headers["Sec-WebSocket-Extensions"]
        await peer.metadata({"call_id": "FS-STEREO", "key": INGEST_KEY, "channels": 2,
                             "campaign": "renewals"})  # fmt: skip
        # Frames of 1,000 stereo samples (62.5 ms): not a whole number of 20 ms frames.
        await peer.send_audio(interleaved(caller, agent), 4000)
        assert await peer.close() == (1000, "")
        status = await wait_state(http, "FS-STEREO", "ARCHIVED")
        assert status["state"] == "ARCHIVED", status
        rate, left, right = await stereo(http, "FS-STEREO")
        await assert_both_speakers(http, "FS-STEREO")
    assert rate == 16000
    padded = np.zeros(length, dtype=np.int16)  # the shorter party is silent to the end
    assert_channel_holds(left, np.concatenate([caller, padded[len(caller) :]]), offset=0)
    assert_channel_holds(right, np.concatenate([agent, padded[len(agent) :]]), offset=0)
    assert_track_counts(status, frames_for(length, 16000), frames_for(length, 16000))
    assert status["metadata"]["freeswitch"] == {"call_id": "FS-STEREO", "channels": 2,
                                                "campaign": "renewals"}  # fmt: skip


async def test_two_forked_mono_legs_make_one_call_that_a_dropped_leg_does_not_end(
    url: str, redis: Redis
):
    headers = {"X-API-Key": INGEST_KEY}
    caller = await FreeSwitchPeer.connect(url, {"call_id": "FS-FORK"}, headers, fork=True)
    agent = await FreeSwitchPeer.connect(url, {"call_id": "FS-FORK", "track": "outbound"},
                                         headers, fork=True)  # fmt: skip
    assert caller.ws.subprotocol == "audio.drachtio.org"
    for leg in (caller, agent):
        await leg.send_audio(bytes(320 * 10), 320)  # no metadata: the query says it all
    assert await feeds_open(redis, "FS-FORK", 2) == 2
    assert await settled(redis, "FS-FORK", 20, "IN_PROGRESS") == (20, "IN_PROGRESS")
    caller.ws.transport.abort()  # the caller's leg lost
    await agent.send_audio(bytes(320 * 3), 320)
    assert await settled(redis, "FS-FORK", 23, "IN_PROGRESS") == (23, "IN_PROGRESS")
    assert await agent.end() == (1000, "")  # the zero-length frame: a graceful end
    assert await settled(redis, "FS-FORK", 23, "COMPLETED") == (23, "COMPLETED")


async def test_a_bad_key_in_the_query_is_refused_at_the_handshake(url: str, redis: Redis):
    with pytest.raises(InvalidStatus) as refused:
        await FreeSwitchPeer.connect(url, {"call_id": "FS-QKEY", "key": "nope"})
    assert refused.value.response.status_code == 403
    assert await nothing_stored(redis, "FS-QKEY")


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ({"call_id": "FS-MKEY", "key": "nope"}, "unauthenticated"),
        ({"call_id": "FS-MKEY", "key": "reader-1"}, "forbidden"),
        ({"call_id": "FS-MKEY"}, "unauthenticated"),
    ],
)
async def test_a_bad_or_missing_key_in_the_metadata_is_a_policy_violation(
    url: str, redis: Redis, metadata: dict[str, str], code: str
):
    peer = await FreeSwitchPeer.connect(url)
    await peer.metadata(metadata)
    await peer.send_audio(bytes(320), 320)
    closed, reason = await closing(peer.ws)
    assert (closed, reason.split(":")[0]) == (1008, code)
    assert await nothing_stored(redis, "FS-MKEY")


async def test_audio_first_without_a_key_anywhere_is_refused(url: str, redis: Redis):
    peer = await FreeSwitchPeer.connect(url, {"call_id": "FS-NOKEY"})
    await peer.send_audio(bytes(320), 320)
    closed, reason = await closing(peer.ws)
    assert (closed, reason.split(":")[0]) == (1008, "unauthenticated")
    assert await nothing_stored(redis, "FS-NOKEY")


async def test_a_socket_that_never_names_its_call_is_closed_after_the_start_timeout(
    keyed: Settings,
):
    quick = keyed.model_copy(update={"ws_start_timeout_s": 0.2})
    async with serving(create_asgi(quick)) as address:
        peer = await FreeSwitchPeer.connect(f"ws://{address}/v1/call/freeswitch")
        closed, reason = await closing(peer.ws)
    assert (closed, reason.split(":")[0]) == (1008, "start_timeout")


@pytest.mark.parametrize(
    ("params", "code", "close"),
    [
        ({"rate": "11025"}, "invalid_rate", 1003),
        ({"channels": "3"}, "invalid_channels", 1003),
        ({"track": "both"}, "invalid_track", 1008),
        ({"call_id": ""}, "invalid_call_id", 1008),
    ],
)
async def test_a_stream_that_cannot_be_stored_is_refused_and_stores_nothing(
    url: str, redis: Redis, params: dict[str, str], code: str, close: int
):
    query = {"call_id": "FS-BAD", "key": INGEST_KEY, **params}
    peer = await FreeSwitchPeer.connect(url, query)
    await peer.send_audio(bytes(320), 320)
    closed, reason = await closing(peer.ws)
    assert (closed, reason.split(":")[0]) == (close, code)
    assert await nothing_stored(redis, "FS-BAD")


async def test_part_samples_end_the_stream_keeping_what_came_before(url: str, redis: Redis):
    peer = await FreeSwitchPeer.connect(url, {"call_id": "FS-ODD", "key": INGEST_KEY})
    await peer.send_audio(bytes(320 * 4), 320)
    await peer.send_audio(bytes(3), 3)
    closed, reason = await closing(peer.ws)
    assert (closed, reason.split(":")[0]) == (1003, "unsupported_audio")
    assert await settled(redis, "FS-ODD", 4, "COMPLETED") == (4, "COMPLETED")


async def test_a_frame_of_more_than_a_second_is_refused_1009_keeping_what_came_before(
    url: str, redis: Redis
):
    peer = await FreeSwitchPeer.connect(url, {"call_id": "FS-BIG", "key": INGEST_KEY})
    await peer.send_audio(bytes(320 * 2), 320)
    await peer.send_audio(bytes(16002), 16002)  # 1.0001 s of 8 kHz mono
    closed, reason = await closing(peer.ws)
    assert (closed, reason.split(":")[0]) == (1009, "frame_too_large")
    assert await settled(redis, "FS-BIG", 2, "COMPLETED") == (2, "COMPLETED")


async def test_redis_unavailable_closes_1013_so_the_pbx_may_try_again(
    server_urls: tuple[str, str],
):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    down = make_settings(server_urls[0], dead_redis, redis_timeout_s=0.2)
    async with serving(create_asgi(down)) as address:
        peer = await FreeSwitchPeer.connect(f"ws://{address}/v1/call/freeswitch",
                                            {"call_id": "FS-DOWN"})  # fmt: skip
        await peer.send_audio(bytes(320), 320)
        closed, reason = await closing(peer.ws)
    assert (closed, reason.split(":")[0]) == (1013, "redis_unavailable")


async def test_the_calls_cap_ends_the_stream_1008_keeping_what_fit(keyed: Settings, redis: Redis):
    capped = keyed.model_copy(update={"max_call_packets": 10})
    async with serving(create_asgi(capped)) as address:
        peer = await FreeSwitchPeer.connect(f"ws://{address}/v1/call/freeswitch",
                                            {"call_id": "FS-CAP", "key": INGEST_KEY})  # fmt: skip
        await peer.send_audio(bytes(320 * 8), 320)
        assert await settled(redis, "FS-CAP", 8, "IN_PROGRESS") == (8, "IN_PROGRESS")
        await peer.send_audio(bytes(320 * 4), 320 * 4)  # 4 more: past the cap of 10
        closed, reason = await closing(peer.ws)
    assert (closed, reason.split(":")[0]) == (1008, "call_too_large")
    assert await settled(redis, "FS-CAP", 8, "COMPLETED") == (8, "COMPLETED")
