"""The supervisor's endpoints: list with keyset pagination across Redis and PostgreSQL, replay."""

from __future__ import annotations

import asyncio
import base64

from httpx import AsyncClient

from jobs.ai import TransientAIError
from tests.factories import send
from tests.fakes import ScriptedAI


async def test_unknown_call_is_404(client: AsyncClient):
    response = await client.get("/v1/calls/nobody")

    assert response.status_code == 404
    assert response.json()["code"] == "call_not_found"


async def test_list_pages_through_live_and_archived_calls_newest_first(
    client: AsyncClient, run_worker
):
    for i in range(5):
        await send(client, f"old-{i}", 0)
        await client.post(f"/v1/call/complete/old-{i}")
    await run_worker()
    for i in range(4):
        await send(client, f"live-{i}", 0)

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/calls", params=params)).json()
        seen += [item["call_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == [f"live-{i}" for i in reversed(range(4))] + [
        f"old-{i}" for i in reversed(range(5))
    ]


async def test_list_filters_by_state(client: AsyncClient, run_worker):
    await send(client, "done", 0)
    await client.post("/v1/call/complete/done")
    await run_worker()
    await send(client, "talking", 0)

    archived = (await client.get("/v1/calls", params={"state": "ARCHIVED"})).json()
    live = (await client.get("/v1/calls", params={"state": "IN_PROGRESS"})).json()

    assert [c["call_id"] for c in archived["items"]] == ["done"]
    assert [c["call_id"] for c in live["items"]] == ["talking"]
    assert archived["next_cursor"] is None


async def test_list_refuses_a_bad_state_limit_or_cursor(client: AsyncClient):
    assert (await client.get("/v1/calls", params={"state": "NAPPING"})).status_code == 422
    assert (await client.get("/v1/calls", params={"limit": 0})).status_code == 422
    assert (await client.get("/v1/calls", params={"cursor": "garbage"})).status_code == 422
    for odd in (b'[1e400, "x"]', b'[99999999999999999999, "x"]', b"{}", b"[1]"):
        cursor = base64.urlsafe_b64encode(odd).decode()
        assert (await client.get("/v1/calls", params={"cursor": cursor})).status_code == 422


async def test_retry_replays_a_failed_call_exactly_once_under_concurrency(
    client: AsyncClient, run_worker, ai: ScriptedAI
):
    ai.fail("transcription", *[TransientAIError("down")] * 5)
    await send(client, "dead", 0)
    await client.post("/v1/call/complete/dead")
    await run_worker()
    assert (await client.get("/v1/calls/dead")).json()["state"] == "FAILED"

    responses = await asyncio.gather(*(client.post("/v1/calls/dead/retry") for _ in range(20)))

    assert sorted(r.status_code for r in responses) == [202] + [409] * 19
    await run_worker()
    call = (await client.get("/v1/calls/dead")).json()
    assert call["state"] == "ARCHIVED"
    assert call["transcript"] == "chunk-0"


async def test_retry_refuses_a_call_that_is_not_failed(client: AsyncClient):
    await send(client, "alive", 0)
    await client.post("/v1/call/complete/alive")

    # Not yet flushed to PostgreSQL: unknown to the dead-letter store.
    assert (await client.post("/v1/calls/alive/retry")).status_code == 404
    assert (await client.post("/v1/calls/nobody/retry")).status_code == 404


async def test_retry_of_an_archived_call_is_409(client: AsyncClient, run_worker):
    await send(client, "fine", 0)
    await client.post("/v1/call/complete/fine")
    await run_worker()

    response = await client.post("/v1/calls/fine/retry")

    assert response.status_code == 409
    assert "only FAILED calls" in response.json()["detail"]
