"""The audit trail (core/audit.py): one INFO line on `callstream.audit` per completion, naming the
action, the call and the actor, never the call's data; the idle sweep is its own actor."""

from __future__ import annotations

import asyncio
import logging

import pytest
from httpx import AsyncClient

from core.audit import audit
from jobs.resources import make_resources
from jobs.sweep import IDLE_SWEEP, complete_idle_calls
from tests.factories import send
from tests.fakes import ScriptedAI


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "callstream.audit"]


async def test_the_idle_sweep_audits_what_it_completes_without_the_data(
    client: AsyncClient, settings, ai: ScriptedAI, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="callstream.audit")
    quick = make_resources(settings.model_copy(update={"call_idle_timeout_s": 0.2}), ai=ai)
    try:
        await send(client, "quiet", 0, "my card number is 4111")
        await asyncio.sleep(0.3)
        assert await complete_idle_calls(quick) == ["quiet"]
        assert await complete_idle_calls(quick) == []  # completed once, audited once
    finally:
        await quick.close()

    assert audit_lines(caplog) == [f"action=complete call_id=quiet actor={IDLE_SWEEP}"]
    (record,) = [r for r in caplog.records if r.name == "callstream.audit"]
    assert record.levelno == logging.INFO
    assert "4111" not in caplog.text


def test_an_audit_line_stays_one_line_whatever_the_actor(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="callstream.audit")

    audit("replay", "call-1", "key 7\naction=complete call_id=other actor=admin")
    audit("complete", "call-2", None)

    first, second = audit_lines(caplog)
    assert "\n" not in first
    assert first == (
        "action=replay call_id=call-1 "
        "actor=key\\x207\\naction=complete\\x20call_id=other\\x20actor=admin"
    )
    assert second == "action=complete call_id=call-2 actor=-"
