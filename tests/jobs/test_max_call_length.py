"""A live call that reaches MAX_CALL_SECONDS is completed by the sweep, through the same
exactly-once path as an idle one, with the reason `max_length` in its history; a call that is
still within it, or already completed, is left alone."""

from __future__ import annotations

import asyncio

from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.resources import make_resources
from jobs.sweep import MAX_LENGTH, complete_overlong_calls
from tests.factories import rows, send, send_all, status
from tests.fakes import ScriptedAI


async def test_a_live_call_reaching_max_call_seconds_is_completed_with_the_reason(
    client: AsyncClient, settings, ai: ScriptedAI, run_worker, engine: AsyncEngine
):
    short = make_resources(settings.model_copy(update={"max_call_seconds": 0.5}), ai=ai)
    try:
        await send_all(client, "long-talk", [0, 1])
        await send_all(client, "done-early", [0])
        await client.post("/v1/call/complete/done-early")
        assert await complete_overlong_calls(short) == []
        await asyncio.sleep(0.6)
        await send(client, "long-talk", 2)  # still talking: not idle, but too long
        await send(client, "new-call", 0)

        assert await complete_overlong_calls(short) == ["long-talk"]
        assert await complete_overlong_calls(short) == []  # once
        await run_worker(short)
    finally:
        await short.close()

    long_talk = await status(client, "long-talk")
    assert long_talk["state"] == "ARCHIVED"
    assert long_talk["completion_reason"] == MAX_LENGTH
    assert (await status(client, "new-call"))["state"] == "IN_PROGRESS"
    reasons = await rows(
        engine,
        "SELECT to_state, reason FROM state_transition WHERE call_id = 'long-talk' ORDER BY id",
    )
    assert ("COMPLETED", f"completed ({MAX_LENGTH})") in [tuple(r) for r in reasons], reasons
    assert (await send(client, "long-talk", 3)).status_code == 409
