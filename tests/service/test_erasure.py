"""Erasure on request (DELETE /v1/calls/{id}), the erasure ledger and its replay after a restore,
and retention, against the suite's real PostgreSQL and Redis and a real arq worker."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cli import main as cli_main
from core.access import Role, key_id
from db import erasures
from db.erasures import CALL_TABLES, Scope
from db.events import parse
from db.forget import ERASED
from db.keys import EVENTS, call_keys
from db.packets import NewPacket
from jobs.erasure import ERASE_TIMEOUT_S, erase, upkeep
from jobs.ledger_replay import main as replay_main
from jobs.ledger_replay import read_ledger
from jobs.queue import IN_PROGRESS_KEY_PREFIX, erase_job_id, in_progress_ttl_s
from jobs.resources import WorkerResources, make_resources
from service.app import create_asgi
from settings import Settings, get_settings
from tests.conftest import drain_queue, make_settings
from tests.factories import complete, scalar, send
from tests.fakes import ScriptedAI
from tests.service.test_access import KEYS
from tests.service.test_access import keyed as keyed_settings
from tests.service.test_object_store import BUCKET, objects_in

# The object-store tests' fixtures: a real S3 HTTP server (moto) and a bucket in it.
from tests.service.test_object_store import bucket as bucket
from tests.service.test_object_store import s3_server as s3_server
from tests.serving import serving

READS = ("", "/history", "/transcript", "/audio")


async def archived(client: AsyncClient, run_worker: Any, *call_ids: str) -> None:
    for call_id in call_ids:
        for n in range(3):
            await send(client, call_id, n, f"my card number is 4111 {n}")
        await complete(client, call_id)
    await run_worker()
    for call_id in call_ids:
        assert (await client.get(f"/v1/calls/{call_id}")).json()["state"] == "ARCHIVED"


async def rows_left(engine: AsyncEngine, call_id: str) -> dict[str, int]:
    found = {}
    for table in CALL_TABLES:
        name = table.__tablename__
        found[name] = await scalar(
            engine, f"SELECT count(*) FROM {name} WHERE call_id = :c", c=call_id
        )
    return {name: n for name, n in found.items() if n}


async def keys_left(redis: Redis, call_id: str) -> list[str]:
    keys = call_keys(call_id)
    left = [k for k in keys.all if k != keys.done and await redis.exists(k)]
    for index in (keys.shard.idle, keys.shard.unflushed, keys.shard.pending, keys.shard.segments):
        if await redis.zscore(index, call_id) is not None:
            left.append(index)
    return left


async def feed_events_of(redis: Redis, call_id: str) -> int:
    """The call's events in the feed, and on a cluster in its shard's outbox (the relay has
    not moved them: the tests' workers run no relay)."""
    found = 0
    for stream in (EVENTS, call_keys(call_id).shard.outbox):
        found += sum(e.call_id == call_id for e in parse(await redis.xrange(stream)))
    return found


async def assert_nothing_left(engine: AsyncEngine, redis: Redis, call_id: str) -> None:
    assert await rows_left(engine, call_id) == {}
    assert await keys_left(redis, call_id) == []
    assert await feed_events_of(redis, call_id) == 0
    # The tombstone: packets for the id stay refused, for good.
    assert await redis.get(call_keys(call_id).done) == ERASED.encode()
    assert await redis.ttl(call_keys(call_id).done) == -1


async def assert_every_read_is_erased(client: AsyncClient, call_id: str) -> None:
    for read in READS:
        answer = await client.get(f"/v1/calls/{call_id}{read}")
        assert answer.status_code == 404, (read, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "call_erased", read
    listed = (await client.get("/v1/calls")).json()["items"]
    assert call_id not in [c["call_id"] for c in listed]
    packet = await send(client, call_id, 99)
    assert packet.status_code == 409, packet.text  # refused: nothing stored
    again = await client.post(f"/v1/call/complete/{call_id}")
    assert (again.status_code, again.json()["code"]) == (404, "call_erased")
    retry = await client.post(f"/v1/calls/{call_id}/retry")
    assert (retry.status_code, retry.json()["code"]) == (404, "call_erased")


@pytest.mark.both_topologies
async def test_deleting_an_archived_call_erases_every_row_key_and_feed_event_and_only_its(
    client: AsyncClient,
    run_worker: Any,
    engine: AsyncEngine,
    redis: Redis,
    worker_resources: WorkerResources,
):
    await archived(client, run_worker, "gone", "kept")
    assert await feed_events_of(redis, "gone") > 0
    kept_rows = await rows_left(engine, "kept")

    asked = await client.delete("/v1/calls/gone")
    assert asked.status_code == 202, asked.text
    assert asked.json()["erased_at"] is None
    await assert_every_read_is_erased(client, "gone")  # already, while the erasure runs
    await run_worker()
    done = await client.delete("/v1/calls/gone")
    second = await client.delete("/v1/calls/gone")

    assert (done.status_code, done.content) == (204, b"")
    assert second.status_code == 204  # idempotent
    await assert_nothing_left(engine, redis, "gone")
    await assert_every_read_is_erased(client, "gone")
    assert await rows_left(engine, "kept") == kept_rows  # the other call is untouched
    assert (await client.get("/v1/calls/kept")).status_code == 200
    assert await feed_events_of(redis, "kept") > 0
    ledger = (await client.get("/v1/erasures")).json()
    assert [
        (e["call_id"], e["scope"], e["reason"], e["requested_by"]) for e in ledger["items"]
    ] == [("gone", "call", "request", "loopback-without-keys")]
    assert ledger["items"][0]["erased_at"] is not None
    # nothing of the call's content (its times aside: a timestamp's digits may spell "4111")
    untimed = [{k: v for k, v in e.items() if not k.endswith("_at")} for e in ledger["items"]]
    assert "4111" not in orjson.dumps(untimed).decode()
    assert "card number" not in orjson.dumps(ledger).decode()
    # A stray re-run releasing the call again must not shorten the tombstone.
    await worker_resources.flush.release("gone", 1, 1)
    assert await redis.ttl(call_keys("gone").done) == -1


@pytest.mark.both_topologies
async def test_deleting_a_live_call_completes_it_first_then_erases_it(
    client: AsyncClient, run_worker: Any, engine: AsyncEngine, redis: Redis
):
    for n in range(5):
        await send(client, "talking", n, "my phone is 555 0100")

    asked = await client.delete("/v1/calls/talking")
    assert asked.status_code == 202
    await assert_every_read_is_erased(client, "talking")
    # The completion queued the call's job, and the erasure waits for it to finish (no worker
    # writes a row after the erasure has deleted them); one worker run does both.
    await run_worker()

    assert (await client.delete("/v1/calls/talking")).status_code == 204
    await assert_nothing_left(engine, redis, "talking")
    await assert_every_read_is_erased(client, "talking")


async def test_deleting_an_unknown_call_is_404_and_records_nothing(
    client: AsyncClient, engine: AsyncEngine
):
    answer = await client.delete("/v1/calls/nobody")

    assert (answer.status_code, answer.json()["code"]) == (404, "call_not_found")
    assert await scalar(engine, "SELECT count(*) FROM erasure") == 0
    bad = await client.delete("/v1/calls/not%20an%20id")
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_call_id")


async def test_an_erasure_job_that_died_mid_way_is_finished_by_the_next_run(
    client: AsyncClient,
    run_worker: Any,
    engine: AsyncEngine,
    redis: Redis,
    worker_resources: WorkerResources,
    monkeypatch: pytest.MonkeyPatch,
):
    await archived(client, run_worker, "cut")
    assert (await client.delete("/v1/calls/cut")).status_code == 202

    async def killed(self: object, call_id: str) -> None:
        raise RuntimeError("the worker died here")

    # The job dies after PostgreSQL's rows went and before Redis' keys and feed events did (an
    # archived call's keys are its done marker only: its feed events show the cut).
    monkeypatch.setattr("db.forget.CallRedis.forget", killed)
    await run_worker()
    assert await rows_left(engine, "cut") == {}
    assert await feed_events_of(redis, "cut") > 0
    assert await scalar(engine, "SELECT erased_at FROM erasure WHERE call_id = 'cut'") is None
    await assert_every_read_is_erased(client, "cut")  # unfinished, and still gone for readers

    monkeypatch.undo()
    run = await upkeep(worker_resources)  # what the next worker does first (run_at_startup)
    await run_worker()

    assert run.requeued == 1
    assert (await client.delete("/v1/calls/cut")).status_code == 204
    await assert_nothing_left(engine, redis, "cut")


async def test_an_erasure_that_keeps_failing_is_queued_again_a_bounded_number_of_times(
    client: AsyncClient,
    run_worker: Any,
    engine: AsyncEngine,
    worker_resources: WorkerResources,
    monkeypatch: pytest.MonkeyPatch,
):
    await archived(client, run_worker, "stuck")
    assert (await client.delete("/v1/calls/stuck")).status_code == 202

    async def refused(self: object, call_id: str) -> None:
        raise RuntimeError("the store refuses every delete")

    monkeypatch.setattr("db.forget.CallRedis.forget", refused)
    await run_worker()  # fails: unfinished
    left = erasures.MAX_REQUEUES - 1
    async with engine.begin() as conn:
        await conn.execute(text(f"UPDATE erasure SET requeues = {left} WHERE call_id = 'stuck'"))

    assert (await upkeep(worker_resources)).requeued == 1  # its last time
    await run_worker()  # fails again
    assert (await upkeep(worker_resources)).requeued == 0  # given up: no endless retries
    assert await scalar(engine, "SELECT erased_at FROM erasure WHERE call_id = 'stuck'") is None
    await assert_every_read_is_erased(client, "stuck")  # still gone for every reader

    # Asked again, it starts afresh, and with the store mended it finishes.
    monkeypatch.undo()
    assert (await client.delete("/v1/calls/stuck")).status_code == 202
    await run_worker()
    assert (await client.delete("/v1/calls/stuck")).status_code == 204


async def test_an_erasure_whose_worker_was_killed_is_taken_up_again_by_the_upkeep(
    client: AsyncClient,
    run_worker: Any,
    engine: AsyncEngine,
    redis: Redis,
    queue: Redis,
    worker_resources: WorkerResources,
    monkeypatch: pytest.MonkeyPatch,
):
    await archived(client, run_worker, "killed")
    assert (await client.delete("/v1/calls/killed")).status_code == 202
    # What a worker SIGKILLed mid-erasure leaves: the job queued, arq's in-progress marker
    # (set when it took the job, never renewed), part of the erasure done, the ledger unfinished.
    marker = IN_PROGRESS_KEY_PREFIX + erase_job_id("killed", "call")
    full_ttl = in_progress_ttl_s(max(worker_resources.settings.job_timeout_s, ERASE_TIMEOUT_S))

    async def killed(self: object, call_id: str) -> None:
        raise RuntimeError("SIGKILL")

    with monkeypatch.context() as patched:
        patched.setattr("db.forget.CallRedis.forget", killed)
        with pytest.raises(RuntimeError):
            await erase(worker_resources, "killed", Scope.CALL)
    # Taken a moment ago: it may still run; the upkeep leaves it alone.
    await queue.psetex(marker, int(full_ttl * 1000) - 1000, b"1")
    assert (await upkeep(worker_resources)).requeued == 0
    assert await queue.exists(marker)
    # Taken longer ago than an erasure may run: its worker is dead.
    await queue.psetex(marker, int((full_ttl - ERASE_TIMEOUT_S - 30) * 1000), b"1")

    run = await upkeep(worker_resources)
    await run_worker()

    assert run.requeued == 1
    assert not await queue.exists(marker)
    assert (await client.delete("/v1/calls/killed")).status_code == 204
    await assert_nothing_left(engine, redis, "killed")


@pytest.fixture
async def retention_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"retention_days": 7, "audio_retention_days": 3})


@pytest.fixture
async def retention_client(retention_settings: Settings) -> AsyncIterator[AsyncClient]:
    app = create_asgi(retention_settings)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as client,
    ):
        yield client


async def started_days_ago(engine: AsyncEngine, call_id: str, days: float) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE call SET created_at = now() - make_interval(secs => :s) WHERE call_id = :c"
            ),
            {"s": days * 86400, "c": call_id},
        )


async def test_retention_erases_only_what_is_due_through_the_same_path_and_writes_the_ledger(
    retention_client: AsyncClient,
    retention_settings: Settings,
    run_worker: Any,
    engine: AsyncEngine,
    redis: Redis,
):
    client = retention_client
    res = make_resources(retention_settings, ai=ScriptedAI())
    try:
        await archived(client, lambda: run_worker(res), "old", "middle", "new")
        await started_days_ago(engine, "old", 8)  # past RETENTION_DAYS: the whole call goes
        await started_days_ago(engine, "middle", 4)  # past AUDIO_RETENTION_DAYS only
        fresh = (await client.get("/v1/calls/new")).json()

        run = await upkeep(res)
        await run_worker(res)
        again = await upkeep(res)  # nothing more is due
    finally:
        await res.close()

    assert (run.due_calls, run.due_recordings) == (1, 1)
    assert (again.due_calls, again.due_recordings, again.requeued) == (0, 0, 0)
    await assert_nothing_left(engine, redis, "old")
    await assert_every_read_is_erased(client, "old")
    middle = (await client.get("/v1/calls/middle")).json()
    assert middle["audio_erased_at"] is not None
    assert middle["audio_erase_at"] is None
    assert "4111" in middle["transcript"]  # transcripts stay
    left = await rows_left(engine, "middle")
    assert "call_segment" not in left  # the recording went
    assert {"utterance", "call", "state_transition"} <= set(left)  # the rest stayed
    audio = await client.get("/v1/calls/middle/audio")
    assert (audio.status_code, audio.json()["code"]) == (404, "audio_erased")
    assert "call_segment" in await rows_left(engine, "new")  # not due: untouched
    created = datetime.fromisoformat(fresh["created_at"])
    assert datetime.fromisoformat(fresh["audio_erase_at"]) == created + timedelta(days=3)
    assert datetime.fromisoformat(fresh["erase_at"]) == created + timedelta(days=7)
    ledger = (await client.get("/v1/erasures")).json()["items"]
    assert sorted((e["call_id"], e["scope"], e["reason"], e["requested_by"]) for e in ledger) == [
        ("middle", "audio", "retention", "retention"),
        ("old", "call", "retention", "retention"),
    ]
    assert all(e["erased_at"] for e in ledger)


async def back_up(engine: AsyncEngine, call_ids: list[str]) -> None:
    """A backup of the calls' rows, in tables of their own."""
    async with engine.begin() as conn:
        for table in CALL_TABLES:
            name = table.__tablename__
            await conn.execute(
                text(
                    f"CREATE TABLE backup_{name} AS SELECT * FROM {name} WHERE call_id = ANY(:ids)"
                ),
                {"ids": call_ids},
            )


async def restore(engine: AsyncEngine) -> None:
    """The backup's rows as they were (the ledger of the backup's time: empty)."""
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM erasure"))
        for table in CALL_TABLES:  # children first
            name = table.__tablename__
            await conn.execute(
                text(f"DELETE FROM {name} WHERE call_id IN (SELECT call_id FROM backup_{name})")
            )
        for table in CALL_TABLES[::-1]:  # parents first
            name = table.__tablename__
            # Generated columns (the utterances' search vector) are made again, not restored.
            columns = ", ".join(
                await conn.scalars(
                    text(
                        "SELECT column_name FROM information_schema.columns WHERE table_name = "
                        ":name AND is_generated = 'NEVER' ORDER BY ordinal_position"
                    ),
                    {"name": name},
                )
            )
            await conn.execute(
                text(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM backup_{name}")
            )
            await conn.execute(text(f"DROP TABLE backup_{name}"))


async def test_replaying_the_ledger_after_a_restore_erases_those_calls_again(
    client: AsyncClient,
    run_worker: Any,
    engine: AsyncEngine,
    redis: Redis,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    await archived(client, run_worker, "first", "second", "stays")
    await back_up(engine, ["first", "second", "stays"])
    backup_taken = datetime.now(UTC)
    for call_id in ("first", "second"):
        assert (await client.delete(f"/v1/calls/{call_id}")).status_code == 202
    await run_worker()
    exported = await client.get("/v1/erasures", params={"since": backup_taken.isoformat()})
    assert len(exported.json()["items"]) == 2
    ledger_file = tmp_path / "ledger.json"
    ledger_file.write_bytes(exported.content)

    await restore(engine)
    assert (await client.get("/v1/calls/first")).status_code == 200  # restored
    # `callstream erase --replay-ledger FILE`, with its stores from the environment.
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    get_settings.cache_clear()
    try:
        exit_code = await asyncio.to_thread(
            cli_main, ["erase", "--replay-ledger", str(ledger_file)]
        )
    finally:
        get_settings.cache_clear()

    assert exit_code == 0
    assert "2 ledger entries replayed: 2 erased again" in capsys.readouterr().out
    for call_id in ("first", "second"):
        await assert_nothing_left(engine, redis, call_id)
        await assert_every_read_is_erased(client, call_id)
    assert (await client.get("/v1/calls/stays")).status_code == 200
    ledger = (await client.get("/v1/erasures")).json()["items"]
    assert sorted((e["call_id"], e["reason"], e["requested_by"]) for e in ledger) == [
        ("first", "request", "loopback-without-keys"),
        ("second", "request", "loopback-without-keys"),
    ]
    assert all(e["erased_at"] for e in ledger)


async def test_the_ledger_is_read_page_by_page_from_the_api(
    client: AsyncClient, run_worker: Any, settings: Settings
):
    await archived(client, run_worker, "p1", "p2", "p3")
    for call_id in ("p1", "p2", "p3"):
        await client.delete(f"/v1/calls/{call_id}")

    async with serving(create_asgi(settings)) as api:
        entries = await read_ledger(f"http://{api}/v1/erasures?limit=2", None)

    assert [e.call_id for e in entries] == ["p1", "p2", "p3"]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"not json", "not JSON"),
        (b'{"items": [{"call_id": "x"}]}', "not a ledger"),
        (
            b'[{"call_id": "a/b", "scope": "call", "reason": "request", "requested_by": "k",'
            b' "requested_at": "2026-01-01T00:00:00Z"}]',
            "not a call id",
        ),
    ],
)
def test_a_ledger_that_is_not_one_is_refused_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, says: str
):
    ledger = tmp_path / "ledger.json"
    ledger.write_bytes(content)

    assert replay_main(["--replay-ledger", str(ledger)]) == 2
    assert says in capsys.readouterr().err


async def test_the_ledger_filters_by_since_and_refuses_a_bad_cursor(client: AsyncClient):
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()

    assert (await client.get("/v1/erasures", params={"since": future})).json()["items"] == []
    bad = await client.get("/v1/erasures", params={"cursor": "x"})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_request")
    huge = await client.get("/v1/erasures", params={"cursor": "9" * 19})
    assert huge.status_code == 422


async def test_an_erasure_nobody_asked_for_does_nothing(
    worker_resources: WorkerResources, client: AsyncClient, run_worker: Any, engine: AsyncEngine
):
    await archived(client, run_worker, "unasked")

    assert await erase(worker_resources, "unasked", Scope.CALL) is False
    assert "call" in await rows_left(engine, "unasked")


async def test_erasing_a_call_deletes_its_objects_in_the_store_the_unnamed_ones_too(
    server_urls: tuple[str, str], bucket: str, engine: AsyncEngine, redis: Redis
):
    url = f"s3://{BUCKET}/calls?endpoint_url={bucket}&region=us-east-1"
    settings = make_settings(*server_urls, segment_seconds=1.0, audio_store_url=url)
    frame = base64.b64encode(bytes([0x7F]) * 160).decode()
    res = make_resources(settings, ai=ScriptedAI())
    app = create_asgi(settings)
    try:
        async with (
            LifespanManager(app) as manager,
            AsyncClient(
                transport=ASGITransport(manager.app), base_url="http://localhost"
            ) as client,
        ):
            for call_id in ("s3-gone", "s3-kept"):
                packets = [NewPacket(n, n * 0.02, frame) for n in range(150)]
                await res.ingestion.append(call_id, packets)
                await res.ingestion.complete(call_id)
            await drain_queue(res)
            assert res.objects is not None
            # An object whose row lost a race: named by no row, found by its prefix.
            await res.objects.put(res.objects.call_prefix("s3-gone") + "stray", b"x")
            before = await objects_in(bucket)
            assert any(k.startswith("calls/s3-gone/") for k in before)

            assert (await client.delete("/v1/calls/s3-gone")).status_code == 202
            await drain_queue(res)
            assert (await client.delete("/v1/calls/s3-gone")).status_code == 204

            after = await objects_in(bucket)
            assert not any(k.startswith("calls/s3-gone/") for k in after)
            assert after == {k: n for k, n in before.items() if k.startswith("calls/s3-kept/")}
            await assert_nothing_left(engine, redis, "s3-gone")
            await assert_every_read_is_erased(client, "s3-gone")
            assert (await client.get("/v1/calls/s3-kept/audio")).status_code == 200
    finally:
        await res.close()
        async with engine.begin() as conn:  # no row may name an object of a stopped server
            await conn.execute(text("DELETE FROM call_segment WHERE object_key IS NOT NULL"))


async def test_only_an_admin_key_erases_and_the_ledger_names_its_id_never_the_key(
    settings: Settings, run_worker: Any, client: AsyncClient
):
    await archived(client, run_worker, "keyed")
    keyed = keyed_settings(settings)
    app = create_asgi(keyed)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as http,
    ):
        supervisor = {"x-api-key": KEYS[Role.SUPERVISOR]}
        admin = {"x-api-key": KEYS[Role.ADMIN]}
        refused = await http.delete("/v1/calls/keyed", headers=supervisor)
        ledger_refused = await http.get("/v1/erasures", headers=supervisor)
        asked = await http.delete("/v1/calls/keyed", headers=admin)
        ledger = await http.get("/v1/erasures", headers=admin)

    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert ledger_refused.status_code == 403
    assert asked.status_code == 202
    (entry,) = ledger.json()["items"]
    assert entry["requested_by"] == f"key:{key_id(KEYS[Role.ADMIN])}"
    assert KEYS[Role.ADMIN] not in ledger.text
