"""Conditional polling (issue #11): ETags, 304 for If-None-Match, Cache-Control, and `wait`
that holds a status read until the call changes, against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from httpx import AsyncClient, Response

from service import conditional
from service.app import create_asgi
from service.conditional import CACHE_CONTROL, parse_if_none_match
from settings import Settings
from tests.factories import send


async def get(client: AsyncClient, url: str, etag: str | None = None, **params: Any) -> Response:
    headers = {"If-None-Match": etag} if etag is not None else {}
    return await client.get(url, params=params, headers=headers)


async def test_etag_is_stable_for_an_unchanged_call_and_moves_with_a_new_packet(
    client: AsyncClient,
):
    await send(client, "c1", 1)

    first, again = await get(client, "/v1/calls/c1"), await get(client, "/v1/calls/c1")
    await send(client, "c1", 2)
    after = await get(client, "/v1/calls/c1")

    assert first.status_code == again.status_code == after.status_code == 200
    assert first.headers["etag"] == again.headers["etag"]
    assert first.headers["etag"].startswith('"')  # strong: no W/
    assert after.headers["etag"] != first.headers["etag"]
    assert after.json()["packets_received"] == 2
    assert first.headers["cache-control"] == CACHE_CONTROL == "private, no-cache"


async def test_if_none_match_naming_the_answer_gets_304_without_a_body(client: AsyncClient):
    await send(client, "c1", 1)
    etag = (await get(client, "/v1/calls/c1")).headers["etag"]

    for header in (etag, f'"other", {etag}', f"W/{etag}", "*", f'"x,y" , {etag}'):
        response = await get(client, "/v1/calls/c1", header)
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == etag
        assert response.headers["cache-control"] == CACHE_CONTROL


async def test_a_stale_or_garbled_if_none_match_gets_the_full_answer(client: AsyncClient):
    await send(client, "c1", 1)
    stale = (await get(client, "/v1/calls/c1")).headers["etag"]
    await send(client, "c1", 2)

    for header in (stale, '"nope"', "garbage", ""):
        response = await get(client, "/v1/calls/c1", header)
        assert response.status_code == 200, header
        assert response.json()["packets_received"] == 2


async def test_errors_are_unchanged(client: AsyncClient):
    unknown = await get(client, "/v1/calls/nobody", "*")
    bad = await get(client, "/v1/calls/nobody", wait=31)

    assert unknown.status_code == 404
    assert unknown.json()["code"] == "call_not_found"
    assert "etag" not in unknown.headers
    assert bad.status_code == 422
    assert "etag" not in bad.headers


async def test_the_list_is_conditional_too(client: AsyncClient):
    await send(client, "c1", 1)
    first = await get(client, "/v1/calls")
    unchanged = await get(client, "/v1/calls", first.headers["etag"])
    listed = await get(client, "/v1/calls", f'"a", {first.headers["etag"]}')
    star = await get(client, "/v1/calls", "*")
    await send(client, "c2", 1)
    changed = await get(client, "/v1/calls", first.headers["etag"])

    assert first.status_code == 200
    assert first.headers["cache-control"] == CACHE_CONTROL
    assert [r.status_code for r in (unchanged, listed, star)] == [304] * 3
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == first.headers["etag"]
    assert unchanged.headers["cache-control"] == CACHE_CONTROL
    assert changed.status_code == 200
    assert changed.headers["etag"] != first.headers["etag"]
    assert [c["call_id"] for c in changed.json()["items"]] == ["c2", "c1"]


async def _send_later(client: AsyncClient, call_id: str, sequence: int, delay: float) -> None:
    await asyncio.sleep(delay)
    await send(client, call_id, sequence)


@pytest.mark.parametrize("with_etag", [True, False], ids=["if-none-match", "arrival"])
async def test_wait_returns_as_soon_as_a_packet_arrives(client: AsyncClient, with_etag: bool):
    await send(client, "c1", 1)
    etag = (await get(client, "/v1/calls/c1")).headers["etag"] if with_etag else None

    started = time.monotonic()
    waited, _ = await asyncio.gather(
        get(client, "/v1/calls/c1", etag, wait=10), _send_later(client, "c1", 2, 0.5)
    )
    elapsed = time.monotonic() - started

    assert waited.status_code == 200
    assert waited.json()["packets_received"] == 2
    assert 0.5 <= elapsed < 5.0  # answered by the packet, not by the 10 s wait running out
    assert waited.headers["etag"] != etag
    assert waited.headers["cache-control"] == CACHE_CONTROL


async def test_wait_answers_at_once_when_the_client_is_already_behind(client: AsyncClient):
    await send(client, "c1", 1)
    stale = (await get(client, "/v1/calls/c1")).headers["etag"]
    await send(client, "c1", 2)

    started = time.monotonic()
    response = await get(client, "/v1/calls/c1", stale, wait=10)

    assert response.status_code == 200
    assert time.monotonic() - started < 5.0  # at once: not after the 10 s wait


@pytest.mark.parametrize("with_etag", [True, False], ids=["if-none-match", "arrival"])
async def test_wait_gives_304_after_the_wait_when_nothing_changes(
    client: AsyncClient, with_etag: bool
):
    await send(client, "c1", 1)
    etag = (await get(client, "/v1/calls/c1")).headers["etag"]

    started = time.monotonic()
    response = await get(client, "/v1/calls/c1", etag if with_etag else None, wait=1.2)
    elapsed = time.monotonic() - started

    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert 1.2 <= elapsed < 6.0  # the whole wait, and not much more


async def test_wait_zero_does_not_wait(client: AsyncClient):
    await send(client, "c1", 1)
    etag = (await get(client, "/v1/calls/c1")).headers["etag"]

    started = time.monotonic()
    response = await get(client, "/v1/calls/c1", etag, wait=0)

    assert response.status_code == 304
    assert time.monotonic() - started < 2.0  # answered at once, not held for a change


async def test_wait_out_of_range_is_refused_like_other_query_parameters(client: AsyncClient):
    await send(client, "c1", 1)

    for bad in ("31", "-1", "30.01", "nan", "inf", "soon"):
        response = await get(client, "/v1/calls/c1", wait=bad)
        assert response.status_code == 422, bad
        assert response.json()["code"] == "invalid_request"
        assert response.json()["errors"][0]["loc"] == ["query", "wait"]
    assert (await get(client, "/v1/calls/c1", wait="0.5")).status_code == 304


@pytest.fixture
async def asgi_app(settings: Settings) -> AsyncIterator[Any]:
    async with LifespanManager(create_asgi(settings)) as manager:
        yield manager.app


async def test_a_client_that_goes_away_stops_the_wait(asgi_app: Any, client: AsyncClient):
    await send(client, "c1", 1)
    etag = (await get(client, "/v1/calls/c1")).headers["etag"]
    messages: list[dict[str, Any]] = []
    requested = False
    hangs_up_at = time.monotonic() + 0.3

    async def receive() -> dict[str, Any]:
        # The request, then the client hangs up; like uvicorn, a disconnect that has happened
        # is answered at once (Starlette polls with an already cancelled scope).
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if time.monotonic() < hangs_up_at:
            await asyncio.sleep(hangs_up_at - time.monotonic())
        return {"type": "http.disconnect"}

    async def send_message(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/v1/calls/c1", "raw_path": b"/v1/calls/c1", "root_path": "",
        "query_string": b"wait=20", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"localhost"), (b"if-none-match", etag.encode())],
    }  # fmt: skip
    started = time.monotonic()
    await asyncio.wait_for(asgi_app(scope, receive, send_message), timeout=10)

    assert time.monotonic() - started < 3.0
    assert messages[0]["status"] == 304


def test_if_none_match_parsing():
    assert parse_if_none_match(None) is None
    star = parse_if_none_match(" * ")
    assert star is not None
    assert star.any
    assert star.matches('"anything"')
    listed = parse_if_none_match('W/"a", "b,c" ,"d"')
    assert listed is not None
    assert not listed.any
    assert listed.tags == {'"a"', '"b,c"', '"d"'}
    assert not listed.matches('"b"')


async def _complete_later(client: AsyncClient, call_id: str, delay: float) -> None:
    await asyncio.sleep(delay)
    assert (await client.post(f"/v1/call/complete/{call_id}")).status_code == 202


async def test_wait_wakes_on_the_call_s_event_not_on_its_polling_floor(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
):
    # With the floor out of reach, only the live feed's COMPLETED event can end the wait early.
    monkeypatch.setattr(conditional, "POLL_INTERVAL_S", 600.0)
    await send(client, "c1", 1)
    etag = (await get(client, "/v1/calls/c1")).headers["etag"]

    waited, _ = await asyncio.wait_for(
        asyncio.gather(
            get(client, "/v1/calls/c1", etag, wait=25), _complete_later(client, "c1", 0.3)
        ),
        timeout=15,
    )

    assert waited.status_code == 200
    assert waited.json()["state"] == "COMPLETED"
