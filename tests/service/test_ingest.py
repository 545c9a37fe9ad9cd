"""Packet ingestion against a real Redis: status codes, dedup, ordering, and bad input."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis

from db.keys import call_keys
from service.app import create_asgi
from settings import Settings
from tests.factories import packet, send, send_all

# Ingestion, completion, the worker and recovery hold on a Redis Cluster as on one Redis.
pytestmark = pytest.mark.both_topologies


@pytest.fixture
def client(both_paths: AsyncClient) -> AsyncClient:
    return both_paths


async def stream_len(redis: Redis, call_id: str) -> int:
    return int(await redis.xlen(call_keys(call_id).packets))


async def test_new_packet_is_accepted_with_202_and_stored(client: AsyncClient, redis: Redis):
    response = await send(client, "call-1", 0)

    assert response.status_code == 202
    assert response.json() == {
        "call_id": "call-1",
        "sequence": 0,
        "duplicate": False,
        "warnings": [],
    }
    assert await stream_len(redis, "call-1") == 1


async def test_duplicate_packet_answers_200_and_is_stored_once(client: AsyncClient, redis: Redis):
    await send(client, "call-1", 0)
    again = await send(client, "call-1", 0)

    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert await stream_len(redis, "call-1") == 1
    status = (await client.get("/v1/calls/call-1")).json()
    assert status["packets_received"] == 1
    assert status["duplicate_packets"] == 1


async def test_gap_is_reported_with_the_missing_range(client: AsyncClient):
    await send_all(client, "call-1", [1, 2])
    response = await send(client, "call-1", 6)

    assert response.status_code == 202
    (warning,) = response.json()["warnings"]
    assert warning["type"] == "gap"
    assert (warning["missing_from"], warning["missing_to"]) == (3, 5)


async def test_out_of_order_packet_is_accepted_and_flagged(client: AsyncClient):
    await send_all(client, "call-1", [1, 2, 4])
    response = await send(client, "call-1", 3)

    assert response.status_code == 202
    assert [w["type"] for w in response.json()["warnings"]] == ["out_of_order"]


async def test_status_of_a_live_call_lists_missing_and_reordered_packets(client: AsyncClient):
    await send_all(client, "call-1", [1, 2, 5, 4, 9, 9])

    status = (await client.get("/v1/calls/call-1")).json()

    assert status["state"] == "IN_PROGRESS"
    assert status["packets_received"] == 5
    assert status["last_sequence"] == 9
    assert status["missing_sequences"] == [3, 6, 7, 8]
    assert status["missing_count"] == 4
    assert status["out_of_order_packets"] == 1
    assert status["duplicate_packets"] == 1
    assert status["transcript"] is None
    assert status["sentiment"] is None


async def test_200_concurrent_packets_of_one_call_are_all_stored(client: AsyncClient, redis: Redis):
    sequences = list(range(200))
    responses = await asyncio.gather(*(send(client, "busy", s) for s in sequences))

    assert all(r.status_code == 202 for r in responses)
    assert await stream_len(redis, "busy") == 200
    status = (await client.get("/v1/calls/busy")).json()
    assert status["packets_received"] == 200
    assert status["duplicate_packets"] == 0
    assert status["missing_sequences"] == []
    assert status["last_sequence"] == 199


async def test_concurrent_copies_of_one_packet_store_it_once(client: AsyncClient, redis: Redis):
    responses = await asyncio.gather(*(send(client, "call-1", 7) for _ in range(50)))

    assert sorted(r.status_code for r in responses) == [200] * 49 + [202]
    assert await stream_len(redis, "call-1") == 1


async def test_packet_after_completion_is_refused_with_409(client: AsyncClient, redis: Redis):
    await send(client, "call-1", 0)
    await client.post("/v1/call/complete/call-1")

    late = await send(client, "call-1", 1)

    assert late.status_code == 409
    assert "already completed" in late.json()["detail"]
    assert await stream_len(redis, "call-1") == 1


@pytest.mark.parametrize(
    ("call_id", "body", "fragment"),
    [
        ("bad id!", packet(0), "call_id"),
        ("x" * 129, packet(0), "call_id"),
        ("call-1%0A", packet(0), "call_id"),  # a trailing newline: refused on every path
        ("call-1", {**packet(0), "sequence": -1}, "sequence"),
        ("call-1", {**packet(0), "sequence": "3"}, "sequence"),
        ("call-1", {**packet(0), "sequence": 1.5}, "sequence"),
        ("call-1", {**packet(0), "sequence": 2**60}, "sequence"),
        ("call-1", {"sequence": 0, "timestamp": 1.0}, "data"),
        ("call-1", {**packet(0), "data": 12}, "data"),
        ("call-1", {**packet(0), "timestamp": "soon"}, "timestamp"),
        ("call-1", {**packet(0), "extra": 1}, "extra"),
    ],
)
async def test_bad_input_is_refused_with_422_and_nothing_stored(
    client: AsyncClient, redis: Redis, call_id: str, body: dict[str, object], fragment: str
):
    response = await client.post(f"/v1/call/stream/{call_id}", json=body)

    assert response.status_code == 422
    assert fragment in str(response.json()["detail"])
    assert await redis.dbsize() == 0


@pytest.mark.parametrize("path", ["/v1/call/stream/call-1", "/v1/call/stream/call-1/batch"])
@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
async def test_a_body_declared_as_something_other_than_json_is_refused_with_415(
    client: AsyncClient, redis: Redis, path: str, content_type: str
):
    body = orjson.dumps({"packets": [packet(0)]} if path.endswith("batch") else packet(0))
    response = await client.post(path, content=body, headers={"content-type": content_type})

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert "application/json" in response.json()["detail"]
    assert await redis.dbsize() == 0


@pytest.mark.parametrize(
    "content_type", [None, "application/json; charset=utf-8", "application/vnd.pbx+json"]
)
async def test_a_json_body_is_accepted_when_undeclared_or_declared_as_any_json_type(
    client: AsyncClient, content_type: str | None
):
    headers = {} if content_type is None else {"content-type": content_type}
    response = await client.post(
        "/v1/call/stream/call-1", content=orjson.dumps(packet(0)), headers=headers
    )

    assert response.status_code == 202


async def test_data_with_a_lone_surrogate_is_refused_with_422(client: AsyncClient, redis: Redis):
    body = b'{"sequence": 0, "data": "a\\ud800b", "timestamp": 1.0}'
    response = await client.post(
        "/v1/call/stream/call-1", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert "data" in str(response.json()["detail"])
    assert await redis.dbsize() == 0


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_timestamp_is_refused_with_422(
    client: AsyncClient, redis: Redis, raw: str
):
    body = f'{{"sequence": 0, "data": "x", "timestamp": {raw}}}'
    response = await client.post(
        "/v1/call/stream/call-1", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert await redis.dbsize() == 0


async def test_a_body_that_is_not_text_is_refused_with_400(client: AsyncClient, redis: Redis):
    response = await client.post(
        "/v1/call/stream/call-1", content=b"y\xff\x11", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"
    assert await redis.dbsize() == 0


async def test_unknown_routes_answer_in_the_same_error_format(client: AsyncClient):
    response = await client.get("/v1/nowhere")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "Not Found",
        "code": "not_found",
    }


async def test_malformed_json_is_refused_with_422(client: AsyncClient, redis: Redis):
    response = await client.post(
        "/v1/call/stream/call-1", content=b"{not json", headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert await redis.dbsize() == 0


async def test_oversized_data_is_refused_with_413_and_nothing_stored(
    client: AsyncClient, redis: Redis
):
    too_big = "é" * (32 * 1024 + 1)  # 64 KiB + 2 bytes in UTF-8

    response = await client.post("/v1/call/stream/call-1", json=packet(0, too_big))

    assert response.status_code == 413
    assert "MAX_PACKET_DATA_BYTES" in response.json()["detail"]
    assert await redis.dbsize() == 0


async def test_a_sequence_written_as_an_integral_float_is_accepted(client: AsyncClient):
    response = await client.post("/v1/call/stream/call-1", json={**packet(0), "sequence": 7.0})

    assert response.status_code == 202
    assert response.json()["sequence"] == 7


async def test_data_of_exactly_the_limit_is_accepted(client: AsyncClient):
    response = await client.post("/v1/call/stream/call-1", json=packet(0, "a" * 64 * 1024))

    assert response.status_code == 202


async def test_an_unexpected_error_on_the_fast_path_is_a_json_500_without_traceback(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr("db.intake.CallIntake.append", broken)
    app = create_asgi(settings)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as client,
    ):
        response = await client.post("/v1/call/stream/call-1", json=packet(0))

    assert response.status_code == 500
    assert response.json() == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "Internal error; it has been logged.",
        "code": "internal_error",
    }
    assert "Traceback" not in response.text


async def test_ingestion_recovers_when_redis_forgets_its_scripts(client: AsyncClient, redis: Redis):
    # A Redis restart empties the script cache: the next calls must reload it, not fail.
    await send(client, "call-1", 0)
    await redis.script_flush()

    responses = await asyncio.gather(*(send(client, "call-1", s) for s in range(1, 21)))

    assert [r.status_code for r in responses] == [202] * 20
    assert await stream_len(redis, "call-1") == 21


async def post_batch(client: AsyncClient, call_id: str, packets: list[dict[str, object]]):
    return await client.post(f"/v1/call/stream/{call_id}/batch", json={"packets": packets})


async def test_batch_stores_every_packet_with_its_own_outcome(client: AsyncClient, redis: Redis):
    await send(client, "call-1", 0)

    response = await post_batch(client, "call-1", [packet(s) for s in (1, 2, 2, 5, 4, 0)])

    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (4, 2)
    outcomes = [
        (r["sequence"], r["duplicate"], [w["type"] for w in r["warnings"]]) for r in body["results"]
    ]
    assert outcomes == [
        (1, False, []),
        (2, False, []),
        (2, True, ["duplicate"]),
        (5, False, ["gap"]),
        (4, False, ["out_of_order"]),
        (0, True, ["duplicate"]),
    ]
    assert await stream_len(redis, "call-1") == 5
    status = (await client.get("/v1/calls/call-1")).json()
    assert (status["packets_received"], status["duplicate_packets"]) == (5, 2)
    assert status["missing_sequences"] == [3]


async def test_batch_for_a_completed_call_is_409_and_stores_nothing(
    client: AsyncClient, redis: Redis
):
    await send(client, "call-1", 0)
    await client.post("/v1/call/complete/call-1")

    response = await post_batch(client, "call-1", [packet(1), packet(2)])

    assert response.status_code == 409
    assert await stream_len(redis, "call-1") == 1


async def test_batch_with_one_bad_packet_is_422_and_stores_nothing(
    client: AsyncClient, redis: Redis
):
    response = await post_batch(client, "call-1", [packet(0), {**packet(1), "sequence": -1}])

    assert response.status_code == 422
    assert "packets" in str(response.json()["detail"])
    assert await redis.dbsize() == 0


@pytest.mark.parametrize("packets", [[], None])
async def test_empty_or_missing_batch_is_422(client: AsyncClient, packets, redis: Redis):
    body = {} if packets is None else {"packets": packets}
    response = await client.post("/v1/call/stream/call-1/batch", json=body)

    assert response.status_code == 422
    assert await redis.dbsize() == 0


async def test_batch_over_the_limit_is_413_and_stores_nothing(client: AsyncClient, redis: Redis):
    response = await post_batch(client, "call-1", [packet(s) for s in range(501)])

    assert response.status_code == 413
    assert "MAX_BATCH_PACKETS" in response.json()["detail"]
    assert await redis.dbsize() == 0


async def test_batch_with_oversized_data_is_413_and_stores_nothing(
    client: AsyncClient, redis: Redis
):
    response = await post_batch(client, "call-1", [packet(0), packet(1, "x" * 70_000)])

    assert response.status_code == 413
    assert await redis.dbsize() == 0


async def test_fast_path_and_fastapi_route_answer_byte_for_byte_alike(settings: Settings):
    bodies: dict[bool, list[tuple[int, object]]] = {}
    for fast in (True, False):
        app = create_asgi(settings.model_copy(update={"ingest_fast_path": fast}))
        async with (
            LifespanManager(app) as manager,
            AsyncClient(
                transport=ASGITransport(manager.app), base_url="http://localhost"
            ) as client,
        ):
            call = f"same-{fast}"
            answers = [await send(client, call, s) for s in (1, 3, 2, 2)]
            answers.append(await post_batch(client, call, [packet(s) for s in (4, 4, 9, 5)]))
            answers.append(await client.post(f"/v1/call/complete/{call}"))
            answers.append(await send(client, call, 10))
        bodies[fast] = [
            (a.status_code, orjson.loads(a.content.replace(call.encode(), b"CALL")))
            for a in answers
        ]

    assert bodies[True] == bodies[False]


async def test_extreme_sequences_and_any_text_are_stored_exactly(client: AsyncClient, redis: Redis):
    tricky = 'héllo "quoted" \\ back\nslash\t☎️ \x01 end'  # (a NUL is refused: #10)
    top = 2**53 - 1
    assert (await send(client, "edge", 0, tricky)).status_code == 202
    assert (await send(client, "edge", top, "last")).status_code == 202
    assert (await send(client, "edge", top, "again")).status_code == 200

    entries = await redis.xrange(call_keys("edge").packets)

    assert [(f[b"s"], f[b"d"].decode()) for _, f in entries] == [
        (b"0", tricky),
        (str(top).encode(), "last"),
    ]
    assert float(entries[0][1][b"t"]) == packet(0)["timestamp"]
    status = (await client.get("/v1/calls/edge")).json()
    assert (status["last_sequence"], status["missing_count"]) == (top, top - 1)
    assert len(status["missing_sequences"]) == 1000


def test_the_served_app_still_shows_the_fastapi_app_behind_the_fast_path():
    from service.app import app

    assert "/v1/call/stream/{call_id}" in app.openapi()["paths"]
    assert app.dependency_overrides == {}


async def test_an_invalid_body_with_thousands_of_problems_gets_a_small_answer(
    client: AsyncClient, redis: Redis
):
    bad = [{"sequence": "x", "data": 1, "timestamp": "y"} for _ in range(500)]
    response = await client.post("/v1/call/stream/call-1/batch", json={"packets": bad})

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "invalid_request"
    assert len(body["errors"]) == 20
    assert "1500 problem(s)" in body["detail"]
    assert len(response.content) < 8_000
    assert await redis.dbsize() == 0
