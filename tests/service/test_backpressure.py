"""A client faster than the segment flush cannot grow a live call's tail in Redis past its bound
(TAIL_MAX_SEGMENTS segments a track): HTTP packets are refused 503 `flush_behind`, storing
nothing, until the worker has stored the tail; the media WebSocket pauses its stream instead and
goes on once the worker catches up, losing nothing. Real Redis, PostgreSQL, uvicorn and arq."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from db.keys import call_keys
from jobs.resources import make_resources
from service.app import create_app, create_asgi
from settings import Settings
from tests.conftest import drain_queue
from tests.serving import serving, worker_running

SILENCE = base64.b64encode(b"\xff" * 160).decode()  # 20 ms of μ-law


@pytest.fixture
def bounded(settings: Settings) -> Settings:
    # A segment is 1 s (50 frames a track); the tail may hold 2 of them.
    return settings.model_copy(update={"segment_seconds": 1.0, "tail_max_segments": 2})


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-route"])
async def client(request: pytest.FixtureRequest, bounded: Settings) -> AsyncIterator[AsyncClient]:
    app = create_asgi(bounded.model_copy(update={"ingest_fast_path": request.param}))
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as http,
    ):
        yield http


def batch(first: int, count: int) -> dict[str, object]:
    packets = [{"sequence": n, "data": SILENCE, "timestamp": n * 0.02}
               for n in range(first, first + count)]  # fmt: skip
    return {"packets": packets}


async def test_http_packets_past_the_tails_bound_are_503_flush_behind_until_it_is_flushed(
    client: AsyncClient, redis: Redis, bounded: Settings
):
    for first in (0, 50):
        answer = await client.post("/v1/call/stream/fast-1/batch", json=batch(first, 50))
        assert answer.status_code == 202
    assert await redis.xlen(call_keys("fast-1").packets) == 100

    refused = await client.post("/v1/call/stream/fast-1/batch", json=batch(100, 50))

    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "flush_behind"
    assert "nothing of these packets was stored" in refused.json()["detail"].lower()
    assert await redis.xlen(call_keys("fast-1").packets) == 100  # nothing of it stored

    res = make_resources(bounded)
    try:
        await drain_queue(res)  # the segment flushes the API asked for
    finally:
        await res.close()
    assert await redis.xlen(call_keys("fast-1").packets) == 0
    again = await client.post("/v1/call/stream/fast-1/batch", json=batch(100, 50))
    assert again.status_code == 202
    status = (await client.get("/v1/calls/fast-1")).json()
    assert (status["packets_received"], status["missing_count"]) == (150, 0)


async def test_a_media_stream_faster_than_the_flush_is_paused_and_loses_nothing(
    bounded: Settings, redis: Redis
):
    frames = 400  # 8 s of one track, sent at once: four times what the tail may hold
    start = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
             "start": {"callSid": "fast-ws", "streamSid": "MZ1", "tracks": ["inbound"],
                       "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                       "channels": 1}}}  # fmt: skip
    tail: list[int] = []
    async with serving(create_app(bounded)) as address:

        async def watch_then_flush() -> None:
            # Nothing flushes yet: the tail stops at its bound (and one batch); then a worker.
            for _ in range(10):
                tail.append(int(await redis.xlen(call_keys("fast-ws").packets)))
                await asyncio.sleep(0.1)
            async with worker_running(bounded):
                await asyncio.sleep(4)

        flusher = asyncio.create_task(watch_then_flush())
        async with connect(f"ws://{address}/v1/call/media") as ws:
            await ws.send(orjson.dumps(start).decode())
            for n in range(frames):
                media = {"event": "media", "sequenceNumber": str(n + 2), "streamSid": "MZ1",
                         "media": {"track": "inbound", "chunk": str(n + 1),
                                   "timestamp": str(20 * n), "payload": SILENCE}}  # fmt: skip
                await ws.send(orjson.dumps(media).decode())
            await ws.send(orjson.dumps({"event": "stop", "sequenceNumber": str(frames + 2),
                                        "streamSid": "MZ1"}).decode())  # fmt: skip
            await ws.wait_closed()
            code = ws.close_code
        await flusher
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            status = (await http.get("/v1/calls/fast-ws")).json()

    assert code == 1000
    assert max(tail) <= 100 + 50  # the bound, passed by one batch at most
    assert (status["packets_received"], status["missing_count"]) == (frames, 0)
