"""Recordings in an S3-compatible object store (AUDIO_STORE_URL), against a real S3 HTTP server
the suite starts (moto's server mode), a real Redis, PostgreSQL and uvicorn: a two-track call of
real speech is flushed in segments whose bytes are objects (PostgreSQL keeps only their heads),
and its recording and transcript read them back."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest
from aiobotocore.session import get_session
from botocore.exceptions import EndpointConnectionError
from moto.server import ThreadedMotoServer
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import connect

from core.audio import TELEPHONY, decode
from core.configured import check_settings
from db.keys import call_keys
from db.object_store import BadStoreUrl, ObjectStore, StoreAddress, key_part
from db.outages import is_outage
from db.packets import NewPacket, Track
from devstack.servers import free_port
from jobs.process import process_call
from jobs.resources import make_resources
from jobs.segments import flush_segment, flush_tail
from service.app import create_app
from settings import Settings
from tests.conftest import make_settings
from tests.factories import rows
from tests.jobs.test_audio_redaction import NoWordTimes, recording, settings_for, tone
from tests.jobs.test_audio_redaction import send as send_tracks
from tests.service.test_recording import speech, two_track_stream, wait_state
from tests.serving import serving, worker_running

BUCKET = "recordings"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
async def bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    # botocore reads its credentials from the environment; any will do for this server.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "callstream-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "callstream-test")
    async with get_session().create_client(
        "s3", endpoint_url=s3_server, region_name="us-east-1"
    ) as s3:
        await s3.create_bucket(Bucket=BUCKET)
        yield s3_server
        listed = await s3.list_objects_v2(Bucket=BUCKET)
        for item in listed.get("Contents", []):
            await s3.delete_object(Bucket=BUCKET, Key=item["Key"])
        await s3.delete_bucket(Bucket=BUCKET)


@pytest.fixture(autouse=True)
async def no_objects_left(redis: Redis, engine: AsyncEngine) -> AsyncIterator[None]:
    """The calls these tests store name objects of a server that stops with the module: none of
    them may outlive it, for a later test whose stores are not emptied (the OpenAPI fuzz run
    reads whatever calls it finds) would read a recording no store holds."""
    yield
    await redis.flushdb()
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM call_segment WHERE object_key IS NOT NULL"))


async def objects_in(endpoint: str) -> dict[str, int]:
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    ) as s3:
        listed = await s3.list_objects_v2(Bucket=BUCKET)
    return {item["Key"]: int(item["Size"]) for item in listed.get("Contents", [])}


async def test_a_calls_audio_is_stored_as_objects_and_played_back_from_them(
    server_urls: tuple[str, str], bucket: str, engine: AsyncEngine
):
    url = f"s3://{BUCKET}/calls?endpoint_url={bucket}&region=us-east-1"
    settings: Settings = make_settings(*server_urls, segment_seconds=5.0, audio_store_url=url)
    caller = speech(["positive-1", "neutral-1"], 20.0)
    agent = speech(["negative-2", "positive-2"], 20.0)
    messages = two_track_stream("CA-S3", caller, agent)

    async with serving(create_app(settings)) as api, worker_running(settings):
        async with connect(f"ws://{api}/v1/call/media") as ws:
            for at in range(0, len(messages), 200):
                for message in messages[at : at + 200]:
                    await ws.send(message)
                await asyncio.sleep(0.05)
            await ws.wait_closed()
        async with httpx.AsyncClient(base_url=f"http://{api}") as http:
            status = await wait_state(http, "CA-S3", "ARCHIVED", 60)
            wav = await http.get("/v1/calls/CA-S3/audio")
            part = await http.get("/v1/calls/CA-S3/audio", headers={"Range": "bytes=44-1043"})
            transcript = (await http.get("/v1/calls/CA-S3/transcript")).json()

    assert status["state"] == "ARCHIVED", status
    async with engine.connect() as conn:
        rows, in_postgres, named = (
            await conn.execute(
                text(
                    "SELECT count(*), sum(octet_length(payload)), count(object_key)"
                    " FROM call_segment WHERE call_id = 'CA-S3'"
                )
            )
        ).one()
    assert rows >= 4  # segments flushed while the call went on, a row per track
    assert (in_postgres, named) == (0, rows)  # the bytes are objects; PostgreSQL holds heads
    stored = await objects_in(bucket)
    assert all(key.startswith("calls/CA-S3/") for key in stored)
    assert sum(stored.values()) == len(caller) + len(agent)  # the audio once, decoded

    pcm = np.frombuffer(wav.content[44:], "<i2").reshape(-1, 2)
    assert np.array_equal(pcm[:, 0], decode(caller, TELEPHONY))
    assert np.array_equal(pcm[:, 1], decode(agent, TELEPHONY))
    assert (part.status_code, part.content) == (206, wav.content[44:1044])
    assert {u["speaker"] for u in transcript["utterances"]} == {"caller", "agent"}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://bucket/x", "must be s3://"),
        ("s3://key:secret@bucket", "must not hold credentials"),
        ("s3://bucket?endpoint=http://x", "unknown parameters"),
    ],
)
def test_an_audio_store_url_that_cannot_work_is_refused_at_start(url: str, says: str):
    with pytest.raises(BadStoreUrl, match=says):
        StoreAddress.parse(url)
    with pytest.raises(ValueError, match=says):  # at start, before anything is served
        check_settings(make_settings("postgresql://x", "redis://x", audio_store_url=url))


def test_an_audio_store_url_names_its_bucket_prefix_endpoint_and_region():
    found = StoreAddress.parse("s3://rec/a/b/?endpoint_url=http://127.0.0.1:9000&region=eu-west-1")

    assert found == StoreAddress("rec", "a/b/", "http://127.0.0.1:9000", "eu-west-1")


async def test_a_store_that_is_down_is_retried_by_the_worker_and_a_503_for_the_api(
    server_urls: tuple[str, str], bucket: str, redis: Redis
):
    dead = f"s3://{BUCKET}?endpoint_url=http://127.0.0.1:{free_port()}&region=us-east-1"
    alive = f"s3://{BUCKET}?endpoint_url={bucket}&region=us-east-1"
    frames = [base64.b64encode(bytes([0x7F]) * 160).decode() for _ in range(50)]
    packets = [NewPacket(n, n * 0.02, f) for n, f in enumerate(frames)]

    down = make_resources(make_settings(*server_urls, audio_store_url=dead))
    try:
        await down.ingestion.append("stored", packets)
        with pytest.raises(EndpointConnectionError) as failed:
            await flush_segment(down, "stored")
        assert is_outage(failed.value)  # the job is retried later (jobs/worker.py)
        assert await redis.xlen(call_keys("stored").packets) == 50  # nothing lost meanwhile
    finally:
        await down.close()
    up = make_resources(make_settings(*server_urls, audio_store_url=alive))
    try:
        assert (await flush_segment(up, "stored")).packets == 50
    finally:
        await up.close()

    settings = make_settings(*server_urls, audio_store_url=dead)
    async with (
        serving(create_app(settings)) as api,
        httpx.AsyncClient(base_url=f"http://{api}") as http,
    ):
        answer = await http.get("/v1/calls/stored/audio")
    assert answer.status_code == 503
    assert answer.json()["code"] == "store_unavailable"
    assert "Traceback" not in answer.text


@pytest.mark.parametrize(
    ("call_id", "part"),
    [
        ("CA-1_x", "CA-1_x"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("a.b:c", "a%2Eb%3Ac"),
        ("a/b", "a%2Fb"),
    ],
)
def test_object_keys_encode_the_call_id_so_no_part_is_a_dot_segment(call_id: str, part: str):
    assert key_part(call_id) == part
    store = ObjectStore("s3://bucket/calls")
    key = store.key(call_id, 3, 1, (1700000000000, 2))
    assert re.fullmatch(rf"calls/{re.escape(part)}/000003\.1\.1700000000000-2\.[0-9a-f]{{12}}", key)
    assert store.key(call_id, 3, 1, (1700000000000, 2)) != key  # a PUT's own: never shared
    assert key.startswith(store.call_prefix(call_id))  # so an erasure finds it by its prefix
    assert all(segment not in (".", "..", "") for segment in key.split("/"))


class SlowStore(ObjectStore):
    """A store whose PUTs wait for the test's word, as a store in trouble holds a request."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.putting = asyncio.Event()
        self.go_on = asyncio.Event()

    async def put(self, key: str, data: bytes) -> None:
        self.putting.set()
        await self.go_on.wait()
        await super().put(key, data)


async def test_a_slow_put_holds_no_connection_and_a_racing_flush_stores_the_segment_once(
    server_urls: tuple[str, str], bucket: str, engine: AsyncEngine, redis: Redis
):
    url = f"s3://{BUCKET}/calls?endpoint_url={bucket}&region=us-east-1"
    frames = [base64.b64encode(bytes([n % 0x7F]) * 160).decode() for n in range(50)]
    res = make_resources(make_settings(*server_urls, audio_store_url=url))
    slow_store = SlowStore(url)
    slow = dataclasses.replace(res, objects=slow_store)  # the same pools, a slow store
    try:
        await res.ingestion.append(
            "CA-slow", [NewPacket(n, n * 0.02, f) for n, f in enumerate(frames)]
        )
        stuck = asyncio.create_task(flush_tail(slow, "CA-slow", None))
        await asyncio.wait_for(slow_store.putting.wait(), 5)

        # While its PUT hangs, the flusher holds no connection of the pool (and nothing of
        # the call's): the call's other flushes (its final one) go on.
        assert res.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        other = await asyncio.wait_for(flush_tail(res, "CA-slow", None), 5)
        assert (other.segments, other.packets) == (1, 50)
        assert not stuck.done()

        slow_store.go_on.set()  # the store answers: the slow flusher finds its segment stored
        late = await asyncio.wait_for(stuck, 5)
    finally:
        slow_store.go_on.set()
        await slow_store.close()
        await res.close()

    assert (late.segments, late.packets) == (0, 0)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT packets, object_key FROM call_segment WHERE call_id = 'CA-slow'")
            )
        ).all()
    assert [r.packets for r in rows] == [50]  # stored once
    # Both planned the same segment, each PUT under a key of its own; the loser deleted its
    # object, so what is left is the winner's, which the row names.
    assert await objects_in(bucket) == {rows[0].object_key: 50 * 160}
    assert await redis.xlen(call_keys("CA-slow").packets) == 0


async def test_audio_redaction_rewrites_the_objects_themselves(
    server_urls: tuple[str, str], bucket: str, engine: AsyncEngine
):
    url = f"s3://{BUCKET}/calls?endpoint_url={bucket}&region=us-east-1"
    settings = settings_for(server_urls, audio_store_url=url)
    audio = tone(2.0)
    res = make_resources(settings, ai=NoWordTimes())
    try:
        await send_tracks(res, "pii-objects", {Track.INBOUND: audio}, live=False)
        await res.ingestion.complete("pii-objects")
        assert await process_call(res, "pii-objects") == "ARCHIVED"
        assert res.objects is not None
        keys = await rows(
            engine,
            "SELECT object_key FROM call_segment WHERE call_id = 'pii-objects' ORDER BY segment",
        )
        stored = b"".join([await res.objects.get(key) for (key,) in keys])
    finally:
        await res.close()
    assert stored == b"\xff" * len(audio)  # μ-law silence, every byte: no copy is left
    got = await recording(settings, "pii-objects")
    assert len(got) == len(audio)
    assert not got.any()
