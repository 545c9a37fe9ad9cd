"""Webhooks against real servers: PostgreSQL, Redis, a receiver on a real socket that verifies
every delivery with the `standardwebhooks` library, and (for the kill) a real worker process.
Each event is written with the state it announces and delivered at least once, with the same
webhook-id and body on every attempt; a receiver down for the whole schedule leaves a dead letter
an admin sends again; 410 stops; one endpoint down never delays another."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook

from core import metrics
from db import calls
from db.intake import CallIntake
from db.packets import NewPacket, Track
from devstack.commands import worker_command
from devstack.processes import free_port
from jobs.ai import PermanentAIError
from jobs.process import process_call
from jobs.resources import WorkerResources, make_resources
from jobs.webhooks import DeliveryLoop
from service.app import create_asgi
from settings import Settings
from tests.conftest import FEED, make_settings
from tests.core.test_metrics import sample
from tests.factories import rows, scalar
from tests.fakes import ScriptedAI
from tests.webhook_receiver import Receiver, drain, receiving

SECRET = "whsec_" + base64.b64encode(b"callstream-webhooks-test-key-32b").decode()
ALL_EVENTS = "call.completed,call.archived,call.failed"


def hooked(server_urls: tuple[str, str], urls: list[str], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_urls": ",".join(urls),
        "webhook_secret": SECRET,
        "webhook_retry_delays_s": "0,0",
        "webhook_timeout_s": 2.0,
        "public_base_url": "https://callstream.example",
        **overrides,
    }
    return make_settings(*server_urls, **values)


@pytest.fixture
async def workers() -> AsyncIterator[list[WorkerResources]]:
    made: list[WorkerResources] = []
    yield made
    for res in made:
        await res.close()


async def archived_call(res: WorkerResources, call_id: str) -> None:
    """A two-party call of text packets, completed and processed: ARCHIVED."""
    said = [("hello I want to cancel", Track.INBOUND), ("happy to help", Track.OUTBOUND)]
    for n, (words, track) in enumerate(said):
        await res.ingestion.append(call_id, [NewPacket(n, 1e9 + n, words, track)])
    await res.ingestion.complete(call_id)
    assert await process_call(res, call_id) == "ARCHIVED"


def verified(receiver: Receiver) -> list[dict[str, Any]]:
    """Every request the receiver got, verified as a receiver would (raises if one is not)."""
    return [Webhook(SECRET).verify(r.body, r.headers) for r in receiver.received]


async def test_every_event_reaches_every_endpoint_signed_and_verifiable(
    server_urls: tuple[str, str], workers: list[WorkerResources]
):
    async with receiving(Receiver()) as first, receiving(Receiver()) as second:
        settings = hooked(server_urls, [first.url, second.url], webhook_events=ALL_EVENTS)
        res = make_resources(settings, ai=ScriptedAI())
        workers.append(res)
        await archived_call(res, "hook-1")
        assert sorted(await drain(res, 1)) == ["delivered"] * 4

    for receiver in (first, second):
        events = verified(receiver)
        assert [e["type"] for e in sorted(events, key=lambda e: e["timestamp"])] == [
            "call.completed",
            "call.archived",
        ]
        archived = next(e for e in events if e["type"] == "call.archived")
        data = archived["data"]
        assert data["call_id"] == "hook-1"
        assert data["state"] == "ARCHIVED"
        assert set(data["conversation"]["speakers"]) == {"caller", "agent"}
        assert data["links"]["transcript"] == (
            "https://callstream.example/v1/calls/hook-1/transcript"
        )
        # Never the transcript: a receiver that wants it follows the link.
        assert "transcript" not in data
        assert b"cancel" not in receiver.received[0].body + receiver.received[1].body
        assert {r.headers["content-type"] for r in receiver.received} == {"application/json"}
    # One event, one id, whichever endpoint gets it; and the same bytes.
    by_id = {r.headers["webhook-id"]: r.body for r in first.received}
    assert {r.headers["webhook-id"]: r.body for r in second.received} == by_id
    assert all(i.startswith("msg_") for i in by_id)


async def test_the_outbox_row_is_written_with_the_state_and_only_for_the_events_asked(
    server_urls: tuple[str, str], engine: AsyncEngine, workers: list[WorkerResources]
):
    settings = hooked(server_urls, ["http://127.0.0.1:9/never"])  # the default events
    res = make_resources(settings, ai=ScriptedAI())
    workers.append(res)
    await archived_call(res, "hook-2")

    # Nothing delivered yet (no worker's loop ran): the event waits in PostgreSQL.
    found = await rows(
        engine, "SELECT event_type, state, attempts, body FROM webhook_delivery ORDER BY id"
    )
    assert [tuple(r) for r in found] == [("call.archived", "pending", 0, None)]


def counted(endpoint: str) -> dict[str, float]:
    """The webhook metrics of `endpoint` (named by scheme, host and port) in this process."""
    scrape = metrics.render().decode()
    return {
        "5xx": sample(scrape, "callstream_webhook_attempts_total", endpoint=endpoint, result="5xx"),
        "2xx": sample(scrape, "callstream_webhook_attempts_total", endpoint=endpoint, result="2xx"),
        "delivered": sample(
            scrape, "callstream_webhook_deliveries_total", endpoint=endpoint, outcome="delivered"
        ),
        "latency": sample(
            scrape, "callstream_webhook_delivery_latency_seconds_count", endpoint=endpoint
        ),
    }


async def test_every_way_to_fail_writes_call_failed_and_a_replay_writes_a_new_event(
    server_urls: tuple[str, str], engine: AsyncEngine, workers: list[WorkerResources]
):
    ai = ScriptedAI()
    settings = hooked(server_urls, ["http://127.0.0.1:9/never"], webhook_events=ALL_EVENTS)
    res = make_resources(settings, ai=ai)
    workers.append(res)
    # Data PostgreSQL refuses (a NUL in the start metadata, written straight to Redis: the door
    # refuses it): the row is created FAILED at once.
    await CallIntake(res.redis, feed=FEED).open_call("refused", {"callSid": "CA\x00"}, 600)
    await res.ingestion.append("refused", [NewPacket(0, 1e9, "hello")])
    await res.ingestion.complete("refused")
    assert await process_call(res, "refused") == "FAILED"
    # The AI refusing the call: FAILED by the worker that holds it.
    ai.fail("transcription", PermanentAIError("400: unreadable"))
    await res.ingestion.append("rejected", [NewPacket(0, 1e9, "hello")])
    await res.ingestion.complete("rejected")
    assert await process_call(res, "rejected") == "FAILED"
    # A replay of the refused call ends ARCHIVED: a new event.
    async with res.sessions() as session, session.begin():
        assert await calls.replay_failed(session, "refused")
    assert await process_call(res, "refused") == "ARCHIVED"

    found = await rows(
        engine, "SELECT call_id, event_type, event_id FROM webhook_delivery ORDER BY id"
    )
    assert [(r.call_id, r.event_type) for r in found] == [
        ("refused", "call.failed"),
        ("rejected", "call.completed"),
        ("rejected", "call.failed"),
        ("refused", "call.archived"),
    ]
    assert len({r.event_id for r in found}) == 4


async def test_call_utterance_sends_each_utterance_as_it_is_stored_when_asked_for(
    server_urls: tuple[str, str], engine: AsyncEngine, workers: list[WorkerResources]
):
    async with receiving(Receiver()) as receiver:
        settings = hooked(server_urls, [receiver.url], webhook_events="call.utterance")
        res = make_resources(settings, ai=ScriptedAI())
        workers.append(res)
        await archived_call(res, "hook-9")
        # Written with the utterances, their body fixed then: before any delivery.
        pending = await rows(engine, "SELECT event_type, body FROM webhook_delivery")
        assert [r.event_type for r in pending] == ["call.utterance"] * 2
        assert all(r.body for r in pending)
        assert await drain(res, 1) == ["delivered"] * 2

    said = sorted(
        (e["data"]["speaker"], e["data"]["track"], e["data"]["text"]) for e in verified(receiver)
    )
    assert said == [
        ("agent", "outbound", "happy to help"),
        ("caller", "inbound", "hello I want to cancel"),
    ]
    assert all(e["type"] == "call.utterance" for e in verified(receiver))


async def test_a_receiver_answering_500_twice_gets_the_third_attempt_with_the_same_id(
    server_urls: tuple[str, str], engine: AsyncEngine, workers: list[WorkerResources]
):
    async with receiving(Receiver(answers=[500, 500])) as receiver:
        res = make_resources(hooked(server_urls, [receiver.url]), ai=ScriptedAI())
        workers.append(res)
        label = f"http://127.0.0.1:{receiver.port}"
        before = counted(label)
        await archived_call(res, "hook-3")
        assert await drain(res, 3) == ["pending", "pending", "delivered"]
        after = counted(label)

    assert len(receiver.received) == 3
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    assert len({r.body for r in receiver.received}) == 1
    assert len(verified(receiver)) == 3
    log = await scalar(engine, "SELECT attempt_log FROM webhook_delivery")
    assert [a["status"] for a in log] == [500, 500, 200]
    assert {k: after[k] - before[k] for k in after} == {
        "5xx": 2, "2xx": 1, "delivered": 1, "latency": 1,
    }  # fmt: skip


async def test_a_receiver_down_for_the_whole_schedule_leaves_a_dead_letter_a_retry_delivers(
    server_urls: tuple[str, str], workers: list[WorkerResources]
):
    port = free_port()  # nothing listens there yet: every attempt is refused
    down = f"http://127.0.0.1:{port}/hooks"
    settings = hooked(server_urls, [down], admin_api_keys="admin-key")
    res = make_resources(settings, ai=ScriptedAI())
    workers.append(res)
    await archived_call(res, "hook-4")
    assert await drain(res, 3) == ["pending", "pending", "failed"]
    assert await drain(res, 1) == []  # a dead letter is not tried again by itself

    admin = {"authorization": "Bearer admin-key"}
    app = create_asgi(settings)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as api,
    ):
        dead = (await api.get("/v1/webhooks/deliveries?state=failed", headers=admin)).json()
        (letter,) = dead["items"]
        assert (letter["event"], letter["call_id"], letter["endpoint"]) == (
            "call.archived",
            "hook-4",
            down,
        )
        assert [a["status"] for a in letter["attempts"]] == [None, None, None]
        assert all(a["error"] for a in letter["attempts"])
        no_key = await api.get("/v1/webhooks/deliveries", headers={})
        retried = await api.post(f"/v1/webhooks/deliveries/{letter['id']}/retry", headers=admin)
        again = await api.post(f"/v1/webhooks/deliveries/{letter['id']}/retry", headers=admin)
        unknown = await api.post("/v1/webhooks/deliveries/999999/retry", headers=admin)
        bad = await api.post("/v1/webhooks/deliveries/abc/retry", headers=admin)

        async with receiving(Receiver(), port=port) as receiver:
            assert await drain(res, 1) == ["delivered"]
        delivered = (await api.get("/v1/webhooks/deliveries", headers=admin)).json()

    assert no_key.status_code == 401
    assert retried.status_code == 202
    assert again.status_code == 409
    assert again.json()["code"] == "delivery_not_failed"
    assert unknown.status_code == 404
    assert bad.status_code == 422
    (event,) = verified(receiver)
    assert receiver.received[0].headers["webhook-id"] == letter["event_id"]
    assert event["data"]["call_id"] == "hook-4"
    assert delivered["items"][0]["state"] == "delivered"
    assert len(delivered["items"][0]["attempts"]) == 4


async def test_410_gone_stops_retrying_that_endpoints_event(
    server_urls: tuple[str, str], workers: list[WorkerResources]
):
    async with receiving(Receiver(answers=[410])) as receiver:
        res = make_resources(hooked(server_urls, [receiver.url]), ai=ScriptedAI())
        workers.append(res)
        await archived_call(res, "hook-5")
        assert await drain(res, 2) == ["failed"]
    assert len(receiver.received) == 1


async def test_one_endpoint_that_never_answers_does_not_delay_another(
    server_urls: tuple[str, str], workers: list[WorkerResources]
):
    async with (
        receiving(Receiver(hold=True)) as stuck,
        receiving(Receiver()) as healthy,
    ):
        settings = hooked(server_urls, [stuck.url, healthy.url], webhook_timeout_s=60.0)
        res = make_resources(settings, ai=ScriptedAI())
        workers.append(res)
        loop = DeliveryLoop(res)
        loop.start()
        try:
            await archived_call(res, "hook-6")
            await stuck.wait_for(1)
            await archived_call(res, "hook-7")
            # The stuck endpoint still holds its first attempt (for up to a minute), and the
            # healthy one has both events all the same.
            await healthy.wait_for(2)
            assert not stuck.released.is_set()
        finally:
            await loop.stop()
    assert {e["data"]["call_id"] for e in verified(healthy)} == {"hook-6", "hook-7"}


def _worker_env(settings: Settings, log_dir: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("WEBHOOK_", "AI_"))}
    return {
        **keep,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "WEBHOOK_URLS": ",".join(settings.webhook_urls),
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_TIMEOUT_S": str(settings.webhook_timeout_s),
        "AI_FAILURE_RATE": "0",
        "AI_LATENCY_MIN_S": "0",
        "AI_LATENCY_MAX_S": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(log_dir / "metrics"),
    }


async def test_a_worker_killed_mid_delivery_leaves_the_event_to_the_next_run(
    server_urls: tuple[str, str], engine: AsyncEngine, workers: list[WorkerResources],
    tmp_path: Path,
):  # fmt: skip
    async with receiving(Receiver(hold=True)) as receiver:
        settings = hooked(server_urls, [receiver.url], webhook_timeout_s=1.0)
        res = make_resources(settings, ai=ScriptedAI())
        workers.append(res)
        with (tmp_path / "worker.log").open("wb") as log:
            worker = await asyncio.create_subprocess_exec(
                *worker_command(), env=_worker_env(settings, tmp_path), stdout=log, stderr=log
            )
            try:
                for n, words in enumerate(["please cancel my contract", "done"]):
                    await res.ingestion.append("hook-8", [NewPacket(n, 1e9 + n, words)])
                await res.ingestion.complete("hook-8")  # the worker process takes it
                await receiver.wait_for(1, timeout_s=60)  # its attempt: held, unanswered
            finally:
                worker.send_signal(signal.SIGKILL)
                await worker.wait()
        assert worker.returncode == -signal.SIGKILL
        state = await scalar(engine, "SELECT state FROM call WHERE call_id = 'hook-8'")
        assert state == "ARCHIVED"
        receiver.hold = False
        receiver.released.set()  # the killed worker's request is answered into the void
        # Its row is due again once the dead worker's lease on it (timeout + margin) is over.
        states: list[str] = []
        async with asyncio.timeout(30):
            while "delivered" not in states:
                states += await drain(res, 1)
                await asyncio.sleep(0.2)

    first, second = receiver.received[0], receiver.received[-1]
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert second.body == first.body
    (event,) = {json.dumps(e, sort_keys=True) for e in verified(receiver)}
    assert json.loads(event)["type"] == "call.archived"
