"""Access: every endpoint x {no key, unknown key, wrong role, right role}, generated from the app's
own routes (a new endpoint without a rule fails here); keys for the media WebSocket; loopback
only without keys; rate limits; body limits. Real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi.routing import APIRoute
from httpx import ASGITransport, AsyncClient
from pydantic import SecretStr
from redis.asyncio import Redis
from starlette.routing import Route, WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core.access import GRANTS, OPEN, Role, key_id, rule_for
from db import rate_limits
from db.keys import call_keys
from devstack.commands import api_command
from devstack.processes import free_port, stop_process, wait_for_port
from service.app import create_app, create_asgi
from settings import Settings
from tests.factories import packet
from tests.serving import serving

KEYS = {Role.INGEST: "ingest-key-1", Role.SUPERVISOR: "supervisor-key-1", Role.ADMIN: "admin-k1"}
WRONG = {Role.INGEST: Role.SUPERVISOR, Role.SUPERVISOR: Role.INGEST, Role.ADMIN: Role.SUPERVISOR}


def keyed(settings: Settings, **more: object) -> Settings:
    return settings.model_copy(
        update={
            "ingest_api_keys": SecretStr(KEYS[Role.INGEST]),
            "supervisor_api_keys": SecretStr(KEYS[Role.SUPERVISOR]),
            "admin_api_keys": SecretStr(KEYS[Role.ADMIN]),
            **more,
        }
    )


async def client_for(settings: Settings, peer: str = "127.0.0.1") -> AsyncIterator[AsyncClient]:
    app = create_asgi(settings)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(
            transport=ASGITransport(manager.app, client=(peer, 40000)), base_url="http://localhost"
        ) as client,
    ):
        yield client


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[AsyncClient]:
    async for client in client_for(keyed(settings)):
        yield client


def all_routes(routes: list[Any], prefix: str = "") -> Iterator[Any]:
    """Every route, included routers' too (FastAPI keeps those behind the router they came in)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from all_routes(included.routes, prefix + route.include_context.prefix)
        else:
            yield prefix, route


def endpoints(settings: Settings) -> Iterator[tuple[str, str]]:
    """(method, concrete path) of every HTTP route the app serves."""
    for prefix, route in all_routes(create_app(settings).routes):
        if isinstance(route, APIRoute | Route) and route.methods:
            path = (prefix + route.path).replace("{call_id}", "c1")
            for method in sorted(route.methods - {"HEAD"}):
                yield method, path


# A stream that never ends is asked with a filter it refuses: past the gate, it answers 422.
ENDLESS = {"/v1/events": {"state": "NOT_A_STATE"}}


def test_every_route_of_the_app_has_an_access_rule(settings: Settings):
    app = create_app(settings)
    found = list(endpoints(settings))
    assert len(found) >= 10
    for method, path in found:
        assert rule_for(method, path) is not None, f"{method} {path} has no rule in RULES"
    sockets = [p + r.path for p, r in all_routes(app.routes) if isinstance(r, WebSocketRoute)]
    assert sockets
    for path in sockets:
        assert rule_for("WEBSOCKET", path) is not None, f"WS {path} has no rule in RULES"


async def test_every_endpoint_answers_each_kind_of_caller_as_its_rule_says(
    guarded: AsyncClient, settings: Settings
):
    for method, path in endpoints(settings):
        rule = rule_for(method, path)
        assert rule is not None
        callers: dict[str, dict[str, str]] = {
            "no key": {},
            "unknown key": {"authorization": "Bearer not-a-key"},
        }
        if rule.role is not OPEN:
            callers["wrong role"] = {"x-api-key": KEYS[WRONG[rule.role]]}
            callers["right role"] = {"authorization": f"Bearer {KEYS[rule.role]}"}
            callers["admin"] = {"authorization": f"Bearer {KEYS[Role.ADMIN]}"}
        for who, headers in callers.items():
            params = ENDLESS.get(path, {})
            answer = await guarded.request(method, path, headers=headers, params=params)
            status = answer.status_code
            where = f"{method} {path} by {who}: {status} {answer.text[:200]}"
            if rule.role is OPEN or who in ("right role", "admin"):
                assert status not in (401, 403), where
            elif who == "wrong role":
                assert status == 403, where
                assert answer.json()["code"] == "forbidden", where
            else:
                assert status == 401, where
                assert answer.headers["www-authenticate"].startswith("Bearer"), where
                assert "not-a-key" not in answer.text, where


def test_admin_may_do_everything_and_the_others_only_their_own():
    assert GRANTS[Role.ADMIN] == frozenset(Role)
    assert GRANTS[Role.INGEST] == {Role.INGEST}
    assert GRANTS[Role.SUPERVISOR] == {Role.SUPERVISOR}


async def test_a_refused_request_stores_nothing_and_its_key_is_never_logged(
    guarded: AsyncClient, redis: Redis, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    for headers in ({}, {"authorization": f"Bearer {KEYS[Role.SUPERVISOR]}"}):
        answer = await guarded.post("/v1/call/stream/c1", json=packet(0), headers=headers)
        assert answer.status_code in (401, 403)
    assert await redis.dbsize() == 0
    ok = await guarded.post(
        "/v1/call/stream/c1", json=packet(0), headers={"x-api-key": KEYS[Role.INGEST]}
    )
    assert ok.status_code == 202
    assert all(key not in caplog.text for key in KEYS.values())


async def test_keys_can_come_from_files(settings: Settings, tmp_path: Path):
    keys = tmp_path / "ingest-keys"
    keys.write_text("# one per line\nfrom-a-file\n\nanother, and-a-third\n")
    async for client in client_for(settings.model_copy(update={"ingest_api_keys_file": keys})):
        for key in ("from-a-file", "and-a-third"):
            answer = await client.post(
                "/v1/call/stream/c1", json=packet(0), headers={"x-api-key": key}
            )
            assert answer.status_code in (200, 202)
        refused = await client.post("/v1/call/stream/c1", json=packet(1))
        assert refused.status_code == 401


async def test_without_keys_only_this_machine_is_served(settings: Settings, redis: Redis):
    async for client in client_for(settings, peer="10.20.30.40"):
        answer = await client.post("/v1/call/stream/c1", json=packet(0))
        assert answer.status_code == 403
        assert "INGEST_API_KEYS" in answer.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200
    assert await redis.dbsize() == 0
    async for client in client_for(settings, peer="127.0.0.1"):
        assert (await client.post("/v1/call/stream/c1", json=packet(0))).status_code == 202


async def test_reads_past_the_keys_rate_get_429_with_retry_after(settings: Settings):
    async for client in client_for(keyed(settings, read_rate_limit=3)):
        headers = {"x-api-key": KEYS[Role.SUPERVISOR]}
        answers = [await client.get("/v1/system", headers=headers) for _ in range(8)]
    statuses = [a.status_code for a in answers]
    assert 429 in statuses
    assert statuses.count(200) <= 6  # at most two one-second windows' worth
    limited = answers[statuses.index(429)]
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["code"] == "rate_limited"


async def test_ingestion_is_not_rate_limited_by_default(guarded: AsyncClient):
    headers = {"x-api-key": KEYS[Role.INGEST]}
    answers = [
        await guarded.post("/v1/call/stream/c1", json=packet(s), headers=headers)
        for s in range(100)
    ]
    assert {a.status_code for a in answers} == {202}


async def test_a_body_over_the_limit_is_refused_by_its_length_before_it_is_read(
    settings: Settings, redis: Redis
):
    async for client in client_for(settings.model_copy(update={"max_body_bytes": 1000})):
        big = json.dumps(packet(0, "x" * 5000)).encode()
        answer = await client.post(
            "/v1/call/stream/c1", content=big, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 413
        assert "MAX_BODY_BYTES" in answer.json()["detail"]

        async def chunks(tail: bytes = big) -> AsyncIterator[bytes]:  # no Content-Length
            for _ in range(100):
                yield b" " * 500
            yield tail

        chunked = await client.post(
            "/v1/call/stream/c1", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413
    assert await redis.dbsize() == 0


@pytest.fixture
async def keyed_server(settings: Settings) -> AsyncIterator[str]:
    async with serving(create_asgi(keyed(settings))) as address:
        yield f"ws://{address}/v1/call/media"


def start_frame(call_id: str, token: str | None) -> str:
    params = {"token": token} if token is not None else {}
    start = {"callSid": call_id, "customParameters": params}
    return json.dumps({"event": "start", "streamSid": "MZ1", "start": start})


def media(seq: int) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "media": {"timestamp": "20", "payload": "AA=="},
        }
    )


async def test_a_media_stream_may_send_its_key_in_start_and_the_key_is_not_kept(
    keyed_server: str, redis: Redis
):
    async with connect(keyed_server) as ws:
        await ws.send(start_frame("CA-key", KEYS[Role.INGEST]))
        await ws.send(media(1))
        await ws.send(json.dumps({"event": "stop"}))
        await ws.wait_closed()
    assert ws.close_code == 1000
    kept = await redis.get(call_keys("CA-key").metadata)
    assert kept is not None
    assert KEYS[Role.INGEST].encode() not in kept


@pytest.mark.parametrize("token", [None, "wrong", KEYS[Role.SUPERVISOR]])
async def test_a_media_stream_without_a_valid_ingest_key_is_closed_with_1008_storing_nothing(
    keyed_server: str, redis: Redis, token: str | None
):
    async with connect(keyed_server) as ws:
        await ws.send(start_frame("CA-nokey", token))
        await ws.send(media(1))
        frames = [json.loads(await ws.recv())]
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1008
    assert frames[0]["code"] in ("unauthenticated", "forbidden")
    assert await redis.dbsize() == 0


async def test_a_media_stream_with_a_bad_key_in_its_headers_is_refused_at_the_handshake(
    keyed_server: str,
):
    with pytest.raises(InvalidStatus):
        async with connect(keyed_server, additional_headers={"x-api-key": "nope"}):
            pass


async def test_completions_and_replays_are_audited_with_the_keys_id_never_the_key(
    guarded: AsyncClient, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="callstream.audit")
    ingest = {"x-api-key": KEYS[Role.INGEST]}
    await guarded.post("/v1/call/stream/c9", json=packet(0, "private words"), headers=ingest)
    assert (await guarded.post("/v1/call/complete/c9", headers=ingest)).status_code == 202

    lines = [r.getMessage() for r in caplog.records if r.name == "callstream.audit"]
    assert lines == [f"action=complete call_id=c9 actor=key:{key_id(KEYS[Role.INGEST])}"]
    assert "private words" not in caplog.text
    assert KEYS[Role.INGEST] not in caplog.text


def test_the_api_without_keys_refuses_to_start_on_a_non_loopback_address(
    server_urls: tuple[str, str],
):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEYS")}
    env |= {"DATABASE_URL": server_urls[0], "REDIS_URL": server_urls[1]}
    command = [*api_command(free_port(), host="0.0.0.0"), "--log-level", "error"]

    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    assert refused.returncode != 0
    assert "INGEST_API_KEYS" in refused.stdout + refused.stderr

    port = free_port()
    keyed_env = {**env, "INGEST_API_KEYS": "k1"}
    started = subprocess.Popen(
        [*api_command(port, host="0.0.0.0"), "--log-level", "error"], env=keyed_env
    )
    try:
        wait_for_port(port, 30, started)
    finally:
        stop_process(started, signal.SIGTERM)


# Sockets: every WebSocket route is authorized at its handshake like a request, but a feed
# whose protocol cannot send headers, which brings its key in its first message.


def websocket_paths(settings: Settings) -> list[str]:
    app = create_app(settings)
    return [p + r.path for p, r in all_routes(app.routes) if isinstance(r, WebSocketRoute)]


async def handshake(url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
    """The handshake's HTTP status (101 when accepted) and the refusal's problem+json body."""
    try:
        async with connect(url, additional_headers=headers, open_timeout=10):
            return 101, None
    except InvalidStatus as refused:
        answer = refused.response
        assert answer.headers["content-type"] == "application/problem+json"
        body: dict[str, Any] = json.loads(answer.body)
        return answer.status_code, body


# What a route's own protocol asks of an upgrade besides the key (docs/pbx.md), so that a caller
# the gate lets through is answered 101.
PROTOCOL_HEADERS = {
    "/v1/call/audiohook": {
        "audiohook-organization-id": "d7934305-0972-4844-938e-9060eef73d05",
        "audiohook-session-id": "30b0e395-84d3-4570-ac13-9a62d8f514c0",
        "audiohook-correlation-id": "e160e428-53e2-487c-977d-96989bf5c99d",
    },
}


async def test_every_websocket_route_answers_each_kind_of_caller_as_its_rule_says(
    settings: Settings,
):
    paths = websocket_paths(settings)
    assert "/ws/supervisor" in paths
    async with serving(create_asgi(keyed(settings))) as address:
        for path in paths:
            rule = rule_for("WEBSOCKET", path)
            assert rule is not None
            assert rule.role is not OPEN
            callers = {
                "no key": ({}, 101 if rule.key_in_first_message else 401),
                "unknown key": ({"authorization": "Bearer not-a-key"}, 401),
                "wrong role": ({"x-api-key": KEYS[WRONG[rule.role]]}, 403),
                "right role": ({"authorization": f"Bearer {KEYS[rule.role]}"}, 101),
                "admin": ({"x-api-key": KEYS[Role.ADMIN]}, 101),
            }
            for who, (headers, expected) in callers.items():
                headers = {**PROTOCOL_HEADERS.get(path, {}), **headers}
                status, body = await handshake(f"ws://{address}{path}", headers)
                assert status == expected, f"WS {path} by {who}: {status} {body}"
                if body is not None:
                    assert body["code"] == {401: "unauthenticated", 403: "forbidden"}[status]
                    assert "not-a-key" not in json.dumps(body)


async def test_a_supervisor_socket_without_a_key_is_refused_at_the_handshake_and_reads_nothing(
    settings: Settings, redis: Redis
):
    async with serving(create_asgi(keyed(settings))) as address:
        for query in ("", "?last_event_id=0-0"):
            status, body = await handshake(f"ws://{address}/ws/supervisor{query}", {})
            assert status == 401
            assert body is not None
            assert body["code"] == "unauthenticated"
            assert "API key" in body["detail"]


@pytest.mark.parametrize("first", [None, json.dumps({"event": "connected"})])
async def test_a_media_socket_without_a_valid_start_in_time_is_closed_1008(
    settings: Settings, redis: Redis, first: str | None
):
    hasty = keyed(settings, ws_start_timeout_s=0.3)
    async with (
        serving(create_asgi(hasty)) as address,
        connect(f"ws://{address}/v1/call/media") as ws,
    ):
        if first is not None:
            await ws.send(first)  # what Twilio sends before start: not a key
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1008
    assert error["code"] == "start_timeout"
    assert "WS_START_TIMEOUT_S" in error["message"]
    assert await redis.dbsize() == 0


async def test_a_started_media_stream_is_not_closed_by_the_start_timeout(
    settings: Settings, redis: Redis
):
    hasty = keyed(settings, ws_start_timeout_s=0.2)
    async with (
        serving(create_asgi(hasty)) as address,
        connect(f"ws://{address}/v1/call/media") as ws,
    ):
        await ws.send(start_frame("CA-slow", KEYS[Role.INGEST]))
        await ws.send(media(1))
        await asyncio.sleep(0.5)  # past the start timeout: the stream carries on
        await ws.send(media(2))
        await ws.send(json.dumps({"event": "stop"}))
        await asyncio.wait_for(ws.wait_closed(), 10)
    assert ws.close_code == 1000
    assert await redis.xlen(call_keys("CA-slow").packets) == 2


async def wait_until_admitted(url: str, headers: dict[str, str]) -> None:
    """A slot is released once the server has seen its socket go: ask until it has."""
    for _ in range(200):
        status, _ = await handshake(url, headers)
        if status == 101:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} was not admitted again")


async def test_a_key_past_its_open_sockets_gets_429_until_one_closes(settings: Settings):
    capped = keyed(settings, ws_max_sockets_per_key=2, ws_connect_rate_limit=0)
    headers = {"x-api-key": KEYS[Role.SUPERVISOR]}
    async with serving(create_asgi(capped)) as address:
        url = f"ws://{address}/ws/supervisor"
        async with (
            connect(url, additional_headers=headers),
            connect(url, additional_headers=headers),
        ):
            status, body = await handshake(url, headers)
            assert status == 429
            assert body is not None
            assert body["code"] == "rate_limited"
            assert "WS_MAX_SOCKETS_PER_KEY" in body["detail"]
            # Another key has its own slots.
            assert (await handshake(url, {"x-api-key": KEYS[Role.ADMIN]}))[0] == 101
            # The event stream counts against the same cap.
            async with AsyncClient(base_url=f"http://{address}") as http:
                answer = await http.get("/v1/events", headers=headers)
            assert answer.status_code == 429
            assert int(answer.headers["retry-after"]) >= 1
        await wait_until_admitted(url, headers)


async def test_a_media_stream_past_its_keys_cap_is_closed_1013_at_start_storing_nothing(
    settings: Settings, redis: Redis
):
    capped = keyed(settings, ws_max_sockets_per_key=1, ws_connect_rate_limit=0)
    async with serving(create_asgi(capped)) as address:
        url = f"ws://{address}/v1/call/media"
        async with (
            connect(url, additional_headers={"x-api-key": KEYS[Role.INGEST]}),
            connect(url) as second,  # its key comes in start
        ):
            await second.send(start_frame("CA-capped", KEYS[Role.INGEST]))
            error = json.loads(await asyncio.wait_for(second.recv(), 10))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(second.recv(), 10)
    assert (error["code"], second.close_code) == ("rate_limited", 1013)
    assert await redis.exists(call_keys("CA-capped").metadata) == 0


async def test_a_keys_new_sockets_past_its_rate_get_429(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    # One one-second window for the whole test, whatever the machine's speed.
    monkeypatch.setattr(rate_limits, "time", SimpleNamespace(time=lambda: 1_900_000_000.5))
    limited = keyed(settings, ws_connect_rate_limit=2)
    headers = {"x-api-key": KEYS[Role.SUPERVISOR]}
    async with serving(create_asgi(limited)) as address:
        url = f"ws://{address}/ws/supervisor"
        statuses = [(await handshake(url, headers))[0] for _ in range(3)]
        status, body = await handshake(url, headers)
    assert statuses == [101, 101, 429]
    assert (status, body and body["code"]) == (429, "rate_limited")
    assert body is not None
    assert "WS_CONNECT_RATE_LIMIT" in body["detail"]


# Without keys: this machine only, by its peer address and by the name it is addressed with.


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil"]
)
async def test_without_keys_a_host_not_naming_this_machine_gets_421_and_nothing_is_stored(
    settings: Settings, redis: Redis, host: str
):
    async for client in client_for(settings):
        headers = {"host": host}
        for method, path in (("POST", "/v1/call/stream/c1"), ("GET", "/v1/calls")):
            answer = await client.request(method, path, json=packet(0), headers=headers)
            assert answer.status_code == 421, (method, path, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["code"] == "host_not_served"
            assert "localhost" in answer.json()["detail"]
    assert await redis.dbsize() == 0


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1", "[::1]:8000"])
async def test_without_keys_a_host_naming_loopback_is_served(settings: Settings, host: str):
    async for client in client_for(settings):
        answer = await client.post("/v1/call/stream/c1", json=packet(0), headers={"host": host})
        assert answer.status_code == 202, answer.text


async def test_without_keys_a_socket_addressed_to_another_host_is_refused_at_the_handshake(
    settings: Settings,
):
    async with serving(create_asgi(settings)) as address:
        port = int(address.rsplit(":", 1)[1])
        assert (await handshake(f"ws://localhost:{port}/ws/supervisor", {}))[0] == 101
        # A page that rebound its own name to 127.0.0.1 connects with that name as Host.
        rebound = f"ws://rebound.example:{port}/ws/supervisor"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(rebound, host="127.0.0.1", port=port, open_timeout=10):
                pass
        assert refused.value.response.status_code == 421
        assert json.loads(refused.value.response.body)["code"] == "host_not_served"
        async with AsyncClient(base_url=f"http://{address}") as http:
            answer = await http.get("/v1/calls", headers={"host": f"rebound.example:{port}"})
        assert answer.status_code == 421


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
        {"origin": "http://localhost.evil.example"},
    ],
)
async def test_without_keys_a_cross_site_write_is_refused_403_and_nothing_is_stored(
    settings: Settings, redis: Redis, headers: dict[str, str]
):
    async for client in client_for(settings):
        answer = await client.post("/v1/call/stream/c1", json=packet(0), headers=headers)
        assert answer.status_code == 403
        assert answer.json()["code"] == "forbidden"
        assert "another site" in answer.json()["detail"]
        completed = await client.post("/v1/call/complete/c1", headers=headers)
        assert completed.status_code == 403
    assert await redis.dbsize() == 0


async def test_without_keys_same_machine_pages_and_cross_site_reads_are_served(
    settings: Settings,
):
    async for client in client_for(settings):
        local = {"origin": "http://localhost:3000", "sec-fetch-site": "same-site"}
        assert (
            await client.post("/v1/call/stream/c1", json=packet(0), headers=local)
        ).status_code == 202
        elsewhere = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
        # A read is not a write; its answer is a browser's to withhold (no CORS is granted).
        assert (await client.get("/v1/calls/c1", headers=elsewhere)).status_code == 200


async def test_with_keys_any_host_and_origin_is_served_with_a_valid_key(
    guarded: AsyncClient,
):
    headers = {
        "host": "callstream.example.com",
        "origin": "https://dashboard.example.com",
        "x-api-key": KEYS[Role.INGEST],
    }
    answer = await guarded.post("/v1/call/stream/c1", json=packet(0), headers=headers)
    assert answer.status_code == 202
