"""Bad input, as a new user or an attacker sends it: each gets its 4xx on every path (the fast
path and the FastAPI routes, and the media WebSocket), and nothing is stored. Real Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from httpx import AsyncClient
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.app import create_asgi
from settings import Settings
from tests.serving import serving

GOOD = {"sequence": 1, "data": "AAAA", "timestamp": 1700000000.0}
JSON = {"content-type": "application/json"}


def body(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def without(key: str) -> bytes:
    return json.dumps({k: v for k, v in GOOD.items() if k != key}).encode()


# (what it is, path, body, headers, status)
HTTP_CASES = [
    ("negative sequence", "/v1/call/stream/c", body(sequence=-1), JSON, 422),
    ("sequence past 2^53-1", "/v1/call/stream/c", body(sequence=2**53), JSON, 422),
    ("huge sequence", "/v1/call/stream/c", body(sequence=10**30), JSON, 422),
    ("sequence as a string", "/v1/call/stream/c", body(sequence="5"), JSON, 422),
    ("fractional sequence", "/v1/call/stream/c", body(sequence=1.5), JSON, 422),
    ("boolean sequence", "/v1/call/stream/c", body(sequence=True), JSON, 422),
    ("null sequence", "/v1/call/stream/c", body(sequence=None), JSON, 422),
    ("NaN timestamp", "/v1/call/stream/c", body().replace(b"1700000000.0", b"NaN"), JSON, 422),
    ("Infinity timestamp", "/v1/call/stream/c", body(timestamp=float("inf")), JSON, 422),
    ("timestamp as words", "/v1/call/stream/c", body(timestamp="soon"), JSON, 422),
    ("data as a number", "/v1/call/stream/c", body(data=12), JSON, 422),
    ("data with a NUL", "/v1/call/stream/c", body(data="a\u0000b"), JSON, 422),
    (
        "data with a lone surrogate",
        "/v1/call/stream/c",
        b'{"sequence":1,"data":"\\ud800","timestamp":1.0}',
        JSON,
        422,
    ),
    ("data over MAX_PACKET_DATA_BYTES", "/v1/call/stream/c", body(data="x" * 65537), JSON, 413),
    ("an unknown field", "/v1/call/stream/c", body(extra=1), JSON, 422),
    ("a missing field", "/v1/call/stream/c", without("data"), JSON, 422),
    (
        "a key twice",
        "/v1/call/stream/c",
        b'{"sequence":1,"sequence":2,"data":"x","timestamp":1.0}',
        JSON,
        422,
    ),
    ("not JSON", "/v1/call/stream/c", b"sequence=1", JSON, 422),
    ("a JSON array", "/v1/call/stream/c", b"[1, 2, 3]", JSON, 422),
    ("deeply nested JSON", "/v1/call/stream/c", b"[" * 50000 + b"]" * 50000, JSON, 400),
    ("not UTF-8", "/v1/call/stream/c", b'{"sequence":1,"data":"\xff","timestamp":1}', JSON, 400),
    ("a UTF-8 byte order mark", "/v1/call/stream/c", b"\xef\xbb\xbf" + body(), JSON, 400),
    ("UTF-16", "/v1/call/stream/c", body().decode().encode("utf-16"), JSON, 400),
    (
        "a form content type",
        "/v1/call/stream/c",
        body(),
        {"content-type": "application/x-www-form-urlencoded"},
        415,
    ),
    ("a text content type", "/v1/call/stream/c", body(), {"content-type": "text/plain"}, 415),
    ("a call id with a slash", "/v1/call/stream/a%2Fb", body(), JSON, 404),
    ("a call id with a newline", "/v1/call/stream/c%0A", body(), JSON, 422),
    ("a call id of 129 characters", "/v1/call/stream/" + "x" * 129, body(), JSON, 422),
    ("a call id with a space", "/v1/call/stream/a%20b", body(), JSON, 422),
    ("an empty batch", "/v1/call/stream/c/batch", b'{"packets": []}', JSON, 422),
    (
        "a batch of 501",
        "/v1/call/stream/c/batch",
        json.dumps({"packets": [GOOD] * 501}).encode(),
        JSON,
        413,
    ),
    (
        "a batch with one bad packet",
        "/v1/call/stream/c/batch",
        json.dumps({"packets": [GOOD, {**GOOD, "sequence": -1}]}).encode(),
        JSON,
        422,
    ),
    ("completing an unknown call", "/v1/call/complete/nobody", b"", {}, 404),
]


@pytest.mark.parametrize(
    ("what", "path", "raw", "headers", "status"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES]
)
async def test_bad_input_gets_its_4xx_on_both_paths_and_nothing_is_stored(
    both_paths: AsyncClient,
    redis: Redis,
    what: str,
    path: str,
    raw: bytes,
    headers: dict[str, str],
    status: int,
):
    answer = await both_paths.post(path, content=raw, headers=headers)

    assert answer.status_code == status, f"{what}: {answer.text[:300]}"
    assert answer.headers["content-type"] == "application/problem+json"
    assert "Traceback" not in answer.text
    assert await redis.dbsize() == 0


CURSORS = ["not-base64!", "A" * 5000, "eyJ4Ijp7fX0", "WzEsIlx1MDAwMCJd", "W1tbW1tbW1tbW1tbW1td"]


@pytest.mark.parametrize("cursor", CURSORS)
async def test_an_odd_cursor_is_a_422_never_a_500(both_paths: AsyncClient, cursor: str):
    answer = await both_paths.get("/v1/calls", params={"cursor": cursor})

    assert answer.status_code == 422, answer.text[:300]


@pytest.fixture
async def ws_url(settings: Settings) -> AsyncIterator[str]:
    async with serving(create_asgi(settings)) as address:
        yield f"ws://{address}/v1/call/media"


def start(call_id: str, **extra: object) -> str:
    return json.dumps({"event": "start", "start": {"callSid": call_id, **extra}})


NESTED: object = {}
for _ in range(300):
    NESTED = {"n": NESTED}

WS_CASES = [
    ("a frame larger than a media frame can be", "x" * 200_000, "frame_too_large", 1009),
    ("a start nested too deeply", start("CA1", deep=NESTED), "metadata_too_large", 1008),
    ("a start holding a NUL", start("CA1", note="a\u0000b"), "invalid_text", 1008),
    ("a start too large", start("CA1", blob="x" * 20_000), "metadata_too_large", 1008),
    ("a binary frame", b"\x00\x01", "unsupported_frame", 1003),
    ("a call id with a newline", start("CA1\n"), "invalid_call_id", 1008),
    ("media before start", json.dumps({"event": "media"}), "not_started", 1008),
]


@pytest.mark.parametrize(
    ("what", "frame", "code", "close_code"), WS_CASES, ids=[c[0] for c in WS_CASES]
)
async def test_a_bad_websocket_frame_gets_its_error_and_close_code_and_nothing_is_stored(
    ws_url: str, redis: Redis, what: str, frame: str | bytes, code: str, close_code: int
):
    async with connect(ws_url, max_size=None) as ws:
        await ws.send(frame)
        first = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()

    assert (first["code"], ws.close_code) == (code, close_code), what
    assert await redis.dbsize() == 0


async def test_a_silent_media_stream_is_closed_after_its_idle_timeout(
    settings: Settings, redis: Redis
):
    quiet = settings.model_copy(update={"ws_idle_timeout_s": 0.3})
    async with (
        serving(create_asgi(quiet)) as address,
        connect(f"ws://{address}/v1/call/media") as ws,
    ):
        first = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert (first["code"], ws.close_code) == ("idle_timeout", 1001)


async def test_a_browser_from_an_origin_not_allowed_is_refused(ws_url: str, redis: Redis):
    async def open_from_elsewhere() -> None:
        async with connect(ws_url, origin="https://evil.example") as ws:  # type: ignore[arg-type]
            await ws.send(start("CA-origin"))

    with pytest.raises(InvalidStatus):
        await open_from_elsewhere()
    assert await redis.dbsize() == 0


DOTS = ["%2E", "%2E%2E", "..."]  # `.` and `..` escaped: a client would resolve them away


@pytest.mark.parametrize("dots", DOTS)
async def test_a_call_id_of_dots_only_is_refused_invalid_call_id_on_every_path(
    both_paths: AsyncClient, redis: Redis, dots: str
):
    asked: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", f"/v1/call/stream/{dots}", {"json": GOOD}),
        ("POST", f"/v1/call/stream/{dots}/batch", {"json": {"packets": [GOOD]}}),
        ("POST", f"/v1/call/complete/{dots}", {}),
        ("GET", f"/v1/calls/{dots}", {}),
        ("GET", f"/v1/calls/{dots}/audio", {}),
        ("POST", f"/v1/calls/{dots}/retry", {}),
    ]
    for method, path, body in asked:
        answer = await both_paths.request(method, path, **body)
        assert answer.status_code == 422, f"{method} {path}: {answer.text[:300]}"
        assert answer.json()["code"] == "invalid_call_id", f"{method} {path}"
        assert "not only dots" in answer.json()["detail"]
    assert await redis.dbsize() == 0
