"""What every PBX feed's tests share: a party's real speech (espeak-ng), the API and a worker on
real sockets, and the checks of a finished two-party call (its stereo WAV sample by sample, its
utterances, its per-track counters)."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
from redis.asyncio import Redis

from core.audio import TELEPHONY, Samples, decode
from db.keys import call_keys
from service.app import create_asgi
from settings import Settings
from simulate.speech import synthesise
from tests.needs import needs_program
from tests.serving import serving, worker_running

needs_espeak = needs_program(
    "espeak-ng", "espeak-ng is not installed (Debian: apt-get install espeak-ng sox)"
)

CALLER_SAYS = "I am calling about the bill for march, it is wrong again"
AGENT_SAYS = "thank you so much, the engineer arrives at nine tomorrow"


def spoken_mulaw(text: str) -> bytes:
    """`text` spoken by espeak-ng, as 8 kHz μ-law (what a PBX's G.711 leg carries)."""
    return synthesise(text)


def spoken(text: str) -> Samples:
    """`text` as 8 kHz 16-bit samples (what Asterisk's slin carries)."""
    return decode(spoken_mulaw(text), TELEPHONY)


def slin(samples: Samples) -> bytes:
    """Signed 16-bit little-endian, as Asterisk and FreeSWITCH send linear audio."""
    return samples.astype("<i2").tobytes()


@asynccontextmanager
async def callstream(settings: Settings) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The API (its AudioSocket listeners included) and a worker; yields the API's address
    and a client of it."""
    async with (
        worker_running(settings),
        serving(create_asgi(settings)) as address,
        httpx.AsyncClient(base_url=f"http://{address}") as http,
    ):
        yield address, http


async def wait_state(http: httpx.AsyncClient, call_id: str, state: str, limit_s: float = 60) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        response = await http.get(f"/v1/calls/{call_id}")
        body = response.json() if response.status_code == 200 else {}
        if body.get("state") == state or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)


async def stereo(http: httpx.AsyncClient, call_id: str) -> tuple[int, Samples, Samples]:
    """The call's recording: its rate, and its left (caller) and right (agent) channels."""
    response = await http.get(f"/v1/calls/{call_id}/audio")
    assert response.status_code == 200, response.text
    with wave.open(io.BytesIO(response.content)) as wav:
        assert wav.getnchannels() == 2
        assert wav.getsampwidth() == 2
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    return rate, pcm[:, 0].astype(np.int16), pcm[:, 1].astype(np.int16)


def assert_channel_holds(channel: Samples, sent: Samples, offset: int | None = None) -> None:
    """The channel is exactly what the party sent, sample for sample, with silence only before
    (two sockets line up by when each began: `offset` None finds where) and after it."""
    if offset is None:
        first_sent = int(np.flatnonzero(sent)[0])
        offset = int(np.flatnonzero(channel)[0]) - first_sent
    assert 0 <= offset <= len(channel) - len(sent), (offset, len(channel), len(sent))
    assert np.array_equal(channel[offset : offset + len(sent)], sent)
    assert not channel[:offset].any()
    assert not channel[offset + len(sent) :].any()


async def assert_both_speakers(http: httpx.AsyncClient, call_id: str) -> None:
    response = await http.get(f"/v1/calls/{call_id}/transcript")
    assert response.status_code == 200, response.text
    utterances = response.json()["utterances"]
    assert {u["track"] for u in utterances} == {"inbound", "outbound"}
    assert all(u["text"] for u in utterances)


def assert_track_counts(status: dict[str, Any], inbound: int, outbound: int) -> None:
    """Each track got its 20 ms frames, numbered 0.. with none missing, doubled or reordered."""
    for name, count in (("inbound", inbound), ("outbound", outbound)):
        track = status["tracks"][name]
        assert track["packets_received"] == count, (name, track)
        assert (track["first_sequence"], track["last_sequence"]) == (0, count - 1)
        assert track["missing_count"] == track["duplicate_packets"] == 0
        assert track["out_of_order_packets"] == 0


def frames_for(samples: int, rate: int = 8000) -> int:
    """The packets a track of `samples` becomes: whole 20 ms frames and a short last one."""
    per_frame = rate // 50
    return -(-samples // per_frame)


async def stored_packets(redis: Redis, call_id: str) -> int:
    return int(await redis.xlen(call_keys(call_id).packets))


async def call_state(redis: Redis, call_id: str) -> str | None:
    """The live call's state in Redis (None before its first packet)."""
    meta = await redis.hgetall(call_keys(call_id).meta)  # type: ignore[misc]
    return meta[b"state"].decode() if b"state" in meta else None


async def settled(redis: Redis, call_id: str, packets: int, state: str) -> tuple[int, str | None]:
    """The call's stored packets and state once they are `packets` and `state` (a PBX closes
    without waiting for us: what it sent last is stored just after), or as they are after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        found = (await stored_packets(redis, call_id), await call_state(redis, call_id))
        if found == (packets, state) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)


async def feeds_open(redis: Redis, call_id: str, count: int) -> int:
    """The call's open feeds, once they are `count` (or as they are after 10 s): a test whose
    parties must overlap waits for both to have named the call before either ends."""
    deadline = time.monotonic() + 10
    while True:
        found = int(await redis.scard(call_keys(call_id).feeds))  # type: ignore[misc]
        if found == count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)
