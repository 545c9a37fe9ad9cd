"""GET /v1/calls/{id} answered by the bare layer (service/status_path.py) is the route's answer:
its status, its headers (their order aside) and its body byte for byte; whatever that layer
does not answer itself reaches FastAPI. The route's answer is asked for with a query parameter
it ignores: a query string always goes to FastAPI."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import AsyncClient, Response

from service.routes import calls
from tests.factories import complete, send


def _same(fast: Response, route: Response) -> None:
    assert fast.status_code == route.status_code
    assert sorted(fast.headers.multi_items()) == sorted(route.headers.multi_items())
    assert fast.content == route.content


@pytest.fixture
def bare_answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The call ids the bare layer read."""
    read: list[str] = []
    real = calls.status_body

    async def counted(res: Any, call_id: str) -> bytes:
        read.append(call_id)
        return await real(res, call_id)

    monkeypatch.setattr("service.status_path.status_body", counted)
    return read


async def _both(client: AsyncClient, call_id: str, **headers: str) -> tuple[Response, Response]:
    fast = await client.get(f"/v1/calls/{call_id}", headers=headers)
    route = await client.get(f"/v1/calls/{call_id}", params={"ignored": "1"}, headers=headers)
    return fast, route


async def test_a_live_and_an_archived_calls_status_are_the_routes_answers_byte_for_byte(
    client: AsyncClient, run_worker: Any, bare_answers: list[str]
):
    for n in (0, 1, 3):
        await send(client, "talking", n)
        await send(client, "done", n)
    await complete(client, "done")
    await run_worker()

    for call_id in ("talking", "done"):
        fast, route = await _both(client, call_id)
        _same(fast, route)
        assert fast.status_code == 200
        assert fast.headers["etag"]
    assert (await client.get("/v1/calls/done")).json()["state"] == "ARCHIVED"
    assert bare_answers == ["talking", "done", "done"]


@pytest.mark.parametrize("tags", ["match", "*", "W/garbled, nonsense"])
async def test_if_none_match_gets_the_routes_304_or_200(
    client: AsyncClient, bare_answers: list[str], tags: str
):
    await send(client, "polled", 0)
    etag = (await client.get("/v1/calls/polled")).headers["etag"]
    header = f'"x", {etag}' if tags == "match" else tags

    fast, route = await _both(client, "polled", **{"If-None-Match": header})

    _same(fast, route)
    assert fast.status_code == (200 if tags.startswith("W/") else 304)
    assert bare_answers == ["polled", "polled"]


async def test_an_unknown_and_an_erased_call_get_the_routes_problems(
    client: AsyncClient, run_worker: Any, bare_answers: list[str]
):
    await send(client, "gone", 0)
    await complete(client, "gone")
    await run_worker()
    assert (await client.delete("/v1/calls/gone")).status_code == 202

    for call_id, code in (("never-seen", "call_not_found"), ("gone", "call_erased")):
        fast, route = await _both(client, call_id)
        _same(fast, route)
        assert (fast.status_code, fast.json()["code"]) == (404, code)
    assert bare_answers == ["never-seen", "gone"]


async def test_a_read_that_fails_is_answered_by_fastapis_handler_without_a_traceback(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
):
    async def down(*_: Any) -> Any:
        raise ConnectionRefusedError("PostgreSQL is down")

    monkeypatch.setattr("service.views.calls.status_row", down)

    fast, route = await _both(client, "unknown-while-down")

    _same(fast, route)
    assert (fast.status_code, fast.json()["code"]) == (503, "postgres_unavailable")
    assert fast.headers["retry-after"] == "2"


async def test_what_the_layer_does_not_answer_reaches_fastapi(
    client: AsyncClient, bare_answers: list[str]
):
    await send(client, "other", 0)

    invalid = await client.get("/v1/calls/" + "x" * 300)
    waited = await client.get("/v1/calls/other", params={"wait": "0"})
    repeated = await client.get(
        "/v1/calls/other", headers=[("If-None-Match", '"a"'), ("If-None-Match", '"b"')]
    )
    head = await client.head("/v1/calls/other")

    assert invalid.status_code == 422
    assert waited.status_code == 304  # the route's long poll: nothing changed within 0 s
    assert repeated.status_code == 200
    assert head.status_code == 405
    assert bare_answers == []
