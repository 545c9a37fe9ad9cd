"""Every retry is bounded, and every end says why (issue 22), against real Redis, PostgreSQL, arq
and an S3 server (moto's server mode): the reaper asks again for a segment flush that is not
done, backing off, and past SEGMENT_FLUSH_MAX_ASKS ends the call FAILED with the reason, its
audio kept for a replay; an object-store outage makes the flush job retry and loses nothing; a
permanent store refusal ends the call FAILED and a replay stores everything once the store is
mended; an OSError that is no connection error is no outage; a call whose job keeps failing ends
FAILED after CALL_MAX_RERUNS re-runs, naming the error."""

from __future__ import annotations

import asyncio
import base64
import errno
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from arq.constants import default_queue_name, job_key_prefix
from httpx import AsyncClient
from moto.server import ThreadedMotoServer
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from db.engine import make_engine
from db.intake import CallIntake, Segmenting
from db.job_failures import Failures, JobFailures
from db.keys import call_keys
from db.outages import is_connection_error, is_outage, is_postgres_outage, store_refusal
from db.packets import NewPacket
from devstack.servers import free_port
from jobs.ai import Sentiment
from jobs.queue import (
    IN_PROGRESS_KEY_PREFIX,
    SEGMENT_JOB_PREFIX,
    call_job_id,
    enqueue_flush_segment,
)
from jobs.resources import WorkerResources, make_resources
from jobs.sweep import recover_orphaned_calls, segment_backoff_s
from settings import Settings
from tests.conftest import FEED, drain_queue, make_settings
from tests.factories import complete, rows, scalar, send_all, status
from tests.fakes import ScriptedAI
from tests.serving import arq_worker

# Buckets of their own: moto's servers in one process share their buckets, and the object-store
# tests of tests/service use another.
REFUSING = "retries-refused"
OUTAGE = "retries-outage"
FRAME = base64.b64encode(bytes([0x7F]) * 160).decode()  # 20 ms of μ-law silence


def frames(count: int, first: int = 0) -> list[NewPacket]:
    return [NewPacket(n, n * 0.02, FRAME) for n in range(first, first + count)]


@contextmanager
def s3_on(port: int) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def store_url(bucket: str, port: int) -> str:
    return f"s3://{bucket}?endpoint_url=http://127.0.0.1:{port}&region=us-east-1"


async def create_bucket(endpoint: str, bucket: str) -> None:
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    ) as s3:
        await s3.create_bucket(Bucket=bucket)


async def drop_bucket(endpoint: str, bucket: str) -> None:
    """The bucket and its objects, if it exists (moto's servers in a process share buckets: a
    test that stopped midway must not leave one to the next)."""
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    ) as s3:
        if bucket not in {b["Name"] for b in (await s3.list_buckets()).get("Buckets", [])}:
            return
        listed = await s3.list_objects_v2(Bucket=bucket)
        for item in listed.get("Contents", []):
            await s3.delete_object(Bucket=bucket, Key=item["Key"])
        await s3.delete_bucket(Bucket=bucket)


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # botocore reads its credentials from the environment; any will do for moto.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "callstream-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "callstream-test")


@pytest.fixture
async def no_objects_left(redis: Redis, engine: AsyncEngine) -> AsyncIterator[None]:
    """The calls these tests store name objects of servers that stop with the test: none may
    outlive it (a later test reading every call it finds would read objects no store holds)."""
    yield
    await redis.flushdb()
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM call_segment WHERE object_key IS NOT NULL"))


async def queued_segment_jobs(queue: Redis, call_id: str) -> list[str]:
    found = await queue.keys(f"{job_key_prefix}{SEGMENT_JOB_PREFIX}*:{call_id}")
    return sorted(k.decode().removeprefix(job_key_prefix) for k in found)


async def job_failed_once(failures: JobFailures, call_id: str) -> None:
    """Until a job of the call has met an error (the worker keeps it in Redis: no event to await
    across processes' stores)."""
    for _ in range(600):
        if (await failures.read(call_id)).last_error is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no job of {call_id} met an error within 30 s")


async def stored_packets(engine: AsyncEngine, call_id: str) -> int:
    sql = "SELECT coalesce(sum(packets), 0) FROM call_segment WHERE call_id = :c"
    return int(await scalar(engine, sql, c=call_id))


async def test_a_segment_flush_never_done_is_asked_again_with_backoff_then_the_call_fails_and_a_replay_stores_it(  # noqa: E501
    server_urls: tuple[str, str],
    client: AsyncClient,
    redis: Redis,
    queue: Redis,
    engine: AsyncEngine,
    aws_credentials: None,
    no_objects_left: None,
):
    call_id, port = "CA-refused", free_port()
    settings = make_settings(
        *server_urls, audio_store_url=store_url(REFUSING, port), segment_flush_max_asks=2
    )
    res = make_resources(settings, ai=ScriptedAI())
    index = call_keys(call_id).shard.segments
    with s3_on(port) as endpoint:  # a store whose bucket is missing: every write is refused
        try:
            intake = CallIntake(redis, feed=FEED, segmenting=Segmenting(5, 30.0))
            assert (await intake.append(call_id, frames(5))).segment_asked == 1

            for ask in (1, 2):
                await redis.zadd(index, {call_id: 1.0}, xx=True)  # its wait has passed
                await recover_orphaned_calls(res)
                await recover_orphaned_calls(res)  # too soon for another: it backs off
                assert await queued_segment_jobs(queue, call_id) == [f"segment:1.{ask}:{call_id}"]
                due = await redis.zscore(index, call_id)
                assert due is not None
                assert due > 1.0
                await drain_queue(res)  # the job runs, and the store refuses it again
                assert await queued_segment_jobs(queue, call_id) == []
                error = (await JobFailures(redis).read(call_id)).last_error
                assert error is not None
                assert "NoSuchBucket" in error
                assert await redis.xlen(call_keys(call_id).packets) == 5

            await redis.zadd(index, {call_id: 1.0}, xx=True)
            await recover_orphaned_calls(res)  # a third request would pass the bound

            call = await status(client, call_id)
            assert call["state"] == "FAILED"
            reason = call["last_error"]
            assert "segment 1 was asked for again 2 times" in reason
            assert "the object store refused it" in reason
            assert "NoSuchBucket" in reason
            assert call_id not in reason  # an object's key names the call: never quoted
            history = await rows(
                engine,
                "SELECT to_state, reason FROM state_transition WHERE call_id=:c ORDER BY id",
                c=call_id,
            )
            assert history[-1] == ("FAILED", reason)
            assert any("segment_flush_failed" in (r.reason or "") for r in history)
            # Nothing queued or asked for again; the audio waits in Redis for a replay.
            assert await redis.zcard(default_queue_name) == 0
            assert await redis.zscore(index, call_id) is None
            assert await redis.zscore(call_keys(call_id).shard.pending, call_id) is None
            assert await redis.xlen(call_keys(call_id).packets) == 5
            ttl = await redis.ttl(call_keys(call_id).packets)
            assert 0 < ttl <= settings.key_retention_s
            assert await recover_orphaned_calls(res) == []
            assert await redis.zcard(default_queue_name) == 0

            await create_bucket(endpoint, REFUSING)  # the store mended
            assert (await client.post(f"/v1/calls/{call_id}/retry")).status_code == 202
            await drain_queue(res)

            assert (await status(client, call_id))["state"] == "ARCHIVED"
            assert await stored_packets(engine, call_id) == 5
            assert await redis.exists(call_keys(call_id).packets) == 0
        finally:
            await res.close()
            await drop_bucket(endpoint, REFUSING)


async def test_a_store_refusing_a_completed_calls_audio_fails_it_at_once_and_a_replay_stores_it(
    server_urls: tuple[str, str],
    client: AsyncClient,
    redis: Redis,
    engine: AsyncEngine,
    aws_credentials: None,
    no_objects_left: None,
):
    call_id, port = "CA-denied", free_port()
    url = store_url(REFUSING, port)
    settings = make_settings(*server_urls, audio_store_url=url, lease_ttl_s=0.2)
    res = make_resources(settings, ai=ScriptedAI())
    with s3_on(port) as endpoint:  # no bucket: the store refuses every write, for good
        try:
            await res.ingestion.append(call_id, frames(20))
            await complete(client, call_id)
            await drain_queue(res)

            call = await status(client, call_id)
            assert call["state"] == "FAILED"
            assert call["last_error"] == (
                "the object store refused the call's audio: "
                "PutObject answered NoSuchBucket (HTTP 404)"
            )
            await asyncio.sleep(0.3)  # past the lease: the reaper does not run it again
            assert await recover_orphaned_calls(res) == []
            assert await redis.zcard(default_queue_name) == 0
            assert await redis.xlen(call_keys(call_id).packets) == 20  # kept for a replay
            ttl = await redis.ttl(call_keys(call_id).packets)
            assert 0 < ttl <= settings.key_retention_s

            await create_bucket(endpoint, REFUSING)
            assert (await client.post(f"/v1/calls/{call_id}/retry")).status_code == 202
            await drain_queue(res)

            assert (await status(client, call_id))["state"] == "ARCHIVED"
            assert await stored_packets(engine, call_id) == 20
        finally:
            await res.close()
            await drop_bucket(endpoint, REFUSING)


async def test_the_reaper_leaves_an_ended_calls_segment_flush_to_the_calls_own_job(
    worker_resources: WorkerResources, redis: Redis, queue: Redis
):
    intake = CallIntake(redis, feed=FEED, segmenting=Segmenting(5, 30.0))
    assert (await intake.append("CA-ended", frames(5))).segment_asked == 1
    await intake.complete("CA-ended", "explicit")
    index = call_keys("CA-ended").shard.segments
    await redis.zadd(index, {"CA-ended": 1.0}, xx=True)  # asked for long ago

    await recover_orphaned_calls(worker_resources)

    assert await queued_segment_jobs(queue, "CA-ended") == []
    assert await redis.zscore(index, "CA-ended") is None
    assert await JobFailures(redis).read("CA-ended") == Failures({}, None)


def test_a_segment_flush_waits_twice_as_long_after_each_request_up_to_a_cap():
    waits = [segment_backoff_s(n) for n in range(1, 8)]

    assert waits[:4] == [30.0, 60.0, 120.0, 240.0]
    assert max(waits) == waits[-1] == 300.0


async def test_an_object_store_outage_makes_the_flush_job_retry_and_loses_nothing(
    server_urls: tuple[str, str],
    redis: Redis,
    engine: AsyncEngine,
    aws_credentials: None,
    no_objects_left: None,
):
    call_id, down_port = "CA-outage", free_port()
    res = make_resources(make_settings(*server_urls, audio_store_url=store_url(OUTAGE, down_port)))
    with s3_on(free_port()) as elsewhere:
        # moto's servers in one process share their buckets: the one that comes up on the port
        # that is down now has the bucket from the start, so the retry finds it at once.
        await create_bucket(elsewhere, OUTAGE)
        try:
            await res.ingestion.append(call_id, frames(50))
            await enqueue_flush_segment(res.queue, call_id, 1)
            worker = arq_worker(res, burst=True, poll_delay=0)
            running = asyncio.create_task(worker.main())
            await job_failed_once(JobFailures(redis), call_id)
            # The job met the outage: it is waiting for its retry, nothing is lost meanwhile.
            assert not running.done()
            assert await redis.xlen(call_keys(call_id).packets) == 50
            assert await stored_packets(engine, call_id) == 0
            with s3_on(down_port):  # the store is back
                async with asyncio.timeout(60):
                    await running
            await worker.close()

            assert worker.jobs_retried >= 1
            assert worker.jobs_failed == 0
            assert await stored_packets(engine, call_id) == 50
            assert await redis.xlen(call_keys(call_id).packets) == 0
        finally:
            await res.close()
            await drop_bucket(elsewhere, OUTAGE)


class FullDiskAI(ScriptedAI):
    """A provider whose sentiment step meets an error of this machine, not of a connection (a
    local model's cache on a full disk): no wait cures it."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    async def analyse_sentiment(self, call_id: str, transcript: str) -> Sentiment:
        if self.broken:
            self.requests.append((call_id, "sentiment"))
            raise OSError(errno.ENOSPC, "No space left on device", "/models/cache")
        return await super().analyse_sentiment(call_id, transcript)


async def test_a_call_whose_job_keeps_failing_ends_failed_after_its_reruns_naming_the_error(
    client: AsyncClient, settings: Settings, redis: Redis, engine: AsyncEngine
):
    ai = FullDiskAI()
    quick = settings.model_copy(update={"lease_ttl_s": 0.2, "call_max_reruns": 2})
    await send_all(client, "CA-stuck", [0, 1, 2])
    await complete(client, "CA-stuck")

    async with asyncio.timeout(60):  # an OSError taken for an outage would be retried for hours
        for run in (1, 2, 3):
            # A worker of its own each time: the count survives a worker's restart.
            res = make_resources(quick, ai=ai)
            try:
                if run > 1:
                    await asyncio.sleep(0.3)  # past the lease of the run that failed
                    assert await recover_orphaned_calls(res) == ["CA-stuck"]
                await drain_queue(res)  # it fails: not an outage, so arq does not retry it
                assert ai.count("sentiment") == run
            finally:
                await res.close()
        res = make_resources(quick, ai=ai)
        await asyncio.sleep(0.3)
        assert await recover_orphaned_calls(res) == []  # the bound: FAILED instead

    call = await status(client, "CA-stuck")
    assert call["state"] == "FAILED"
    assert call["last_error"].startswith("its job ran 3 times and never finished (OSError at ")
    assert "No space left" not in call["last_error"]  # the type and place, never the message
    assert await redis.zcard(default_queue_name) == 0
    assert await redis.exists(call_keys("CA-stuck").failures) == 0  # a replay starts afresh
    await asyncio.sleep(0.3)
    assert await recover_orphaned_calls(res) == []

    ai.broken = False  # mended: a replay archives it
    assert (await client.post("/v1/calls/CA-stuck/retry")).status_code == 202
    await drain_queue(res)
    await res.close()
    assert (await status(client, "CA-stuck"))["state"] == "ARCHIVED"
    assert await scalar(engine, "SELECT count(*) FROM call WHERE call_id='CA-stuck'") == 1


async def test_a_call_whose_worker_dies_every_time_ends_failed_after_its_reruns(
    client: AsyncClient, settings: Settings, queue: Redis
):
    res = make_resources(settings.model_copy(update={"lease_ttl_s": 0.2, "call_max_reruns": 2}))
    await send_all(client, "CA-killer", [0, 1, 2])
    await complete(client, "CA-killer")  # its job is queued
    running = IN_PROGRESS_KEY_PREFIX + call_job_id("CA-killer")
    try:
        for _ in (1, 2):
            await queue.set(running, b"1")  # a worker took the job, then died (it kept no lease)
            await asyncio.sleep(0.3)  # past the grace
            assert await recover_orphaned_calls(res) == ["CA-killer"]
        await queue.set(running, b"1")
        await asyncio.sleep(0.3)
        assert await recover_orphaned_calls(res) == []
    finally:
        await res.close()

    call = await status(client, "CA-killer")
    assert call["state"] == "FAILED"
    assert call["last_error"] == (
        "its job ran 3 times and never finished "
        "(its worker stopped, or it ran past JOB_TIMEOUT_S, each time)"
    )


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EMFILE, "Too many open files"),
        PermissionError(errno.EACCES, "Permission denied"),
        OSError("a message of no socket"),
    ],
)
def test_an_oserror_that_is_no_connection_error_is_no_outage(error: OSError):
    assert not is_connection_error(error)
    assert not is_postgres_outage(error)
    assert not is_outage(error)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        TimeoutError(),
        socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        OSError(
            "Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432, 0, 0), "
            "[Errno 111] Connect call failed ('127.0.0.1', 5432)"
        ),
    ],
)
def test_a_connection_error_is_a_postgres_outage(error: OSError):
    assert is_connection_error(error)
    assert is_postgres_outage(error)


async def test_what_a_real_connection_and_a_real_file_raise_are_told_apart(tmp_path: Path):
    dead = make_engine(f"postgresql+asyncpg://x:y@127.0.0.1:{free_port()}/z", pool_size=1)
    try:
        with pytest.raises(ConnectionRefusedError) as refused:
            async with dead.connect():
                pass
    finally:
        await dead.dispose()
    with pytest.raises(FileNotFoundError) as missing:
        (tmp_path / "no such directory" / "model.bin").read_bytes()

    assert is_postgres_outage(refused.value)
    assert not is_outage(missing.value)


def test_a_store_refusal_is_named_and_an_outage_is_not_one():
    from botocore.exceptions import ClientError, EndpointConnectionError

    denied = ClientError(
        {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
        "PutObject",
    )
    busy = ClientError(
        {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject"
    )

    assert store_refusal(denied) == "PutObject answered AccessDenied (HTTP 403)"
    assert store_refusal(busy) is None
    assert is_outage(busy)
    assert store_refusal(EndpointConnectionError(endpoint_url="http://x")) is None
    assert store_refusal(ValueError("x")) is None
