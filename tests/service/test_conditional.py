"""Conditional reads (issue #11): ETags, 304 for If-None-Match and Cache-Control, against real
Redis and PostgreSQL."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient, Response

from service.conditional import CACHE_CONTROL, parse_if_none_match
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
    bad = await get(client, "/v1/calls", limit=0)

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
