"""The webhooks' deliveries at rest, against the real PostgreSQL: a claim takes each endpoint's
due rows up to its room (never more in flight to one endpoint than the bound, whatever another
endpoint's backlog), under a lease that keeps them from a second claim; a late worker's record
of an attempt is fenced off."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from db import deliveries

A, B = "http://a.example/hook", "http://b.example/hook"


async def _events(engine: AsyncEngine, endpoint: str, count: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO webhook_delivery (event_id, event_type, call_id, endpoint)"
                " SELECT 'msg_' || n || :e, 'call.archived', 'c' || n, :e"
                " FROM generate_series(1, :count) AS n"
            ),
            {"e": endpoint, "count": count},
        )


async def test_a_claim_takes_each_endpoints_room_and_a_lease_keeps_rows_from_a_second_claim(
    server_urls: tuple[str, str], engine: AsyncEngine
):
    await _events(engine, A, 10)  # an endpoint with a backlog, 3 attempts already in flight
    await _events(engine, B, 2)
    async with engine.connect() as conn:
        first = await deliveries.claim_due(conn, 60.0, 4, 64, {A: 3})
        second = await deliveries.claim_due(conn, 60.0, 4, 64, {})
        await conn.commit()

    assert Counter(d.endpoint for d in first) == {A: 1, B: 2}
    assert Counter(d.endpoint for d in second) == {A: 4}  # B's are leased; A's next four
    assert not {d.id for d in first} & {d.id for d in second}


async def test_an_attempt_recorded_by_a_worker_whose_lease_ran_out_is_fenced_off(
    server_urls: tuple[str, str], engine: AsyncEngine
):
    await _events(engine, A, 1)
    async with engine.connect() as conn:
        (late,) = await deliveries.claim_due(conn, 0.0, 4, 64, {})  # a lease over at once
        (taken,) = await deliveries.claim_due(conn, 60.0, 4, 64, {})  # another worker's
        assert await deliveries.record_attempt(conn, taken, "delivered", 200, None) is not None
        assert await deliveries.record_attempt(conn, late, "pending", 500, "boom", 1.0) is None
        await conn.commit()
        row = (await conn.execute(text("SELECT state, attempts FROM webhook_delivery"))).one()

    assert late.id == taken.id
    assert tuple(row) == ("delivered", 1)
