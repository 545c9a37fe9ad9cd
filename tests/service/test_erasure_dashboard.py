"""The dashboard's call page and privacy: when retention will erase the call and its recording,
and an erased call said to be gone (a real Chromium against a real API and worker)."""

from __future__ import annotations

import asyncio

from httpx import AsyncClient
from playwright.async_api import Browser, expect

from settings import Settings
from tests.fakes import ScriptedAI
from tests.service.test_dashboard import WAIT_MS, callstream, complete, dashboard, stream
from tests.service.test_dashboard import browser as browser  # the module's Chromium


async def archived(api: AsyncClient, call_id: str) -> None:
    await stream(api, call_id, 1, 2)
    await complete(api, call_id)
    for _ in range(200):
        if (await api.get(f"/v1/calls/{call_id}")).json()["state"] == "ARCHIVED":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{call_id} did not reach ARCHIVED")


async def test_a_calls_page_says_when_retention_erases_it_and_that_an_erased_call_is_gone(
    browser: Browser, settings: Settings
):
    kept = settings.model_copy(update={"retention_days": 30, "audio_retention_days": 7})
    async with callstream(kept, ScriptedAI()) as api, dashboard(browser, api) as page:
        await archived(api, "kept-call")
        await archived(api, "gone-call")
        assert (await api.delete("/v1/calls/gone-call")).status_code == 202

        await page.goto(str(api.base_url.join("/dashboard#/calls/kept-call")))
        await expect(page.locator("#call-state")).to_have_text("ARCHIVED", timeout=WAIT_MS)
        await expect(page.locator("#call-audio-kept")).to_contain_text("until ")
        await expect(page.locator("#call-kept")).not_to_have_text("no limit")
        await expect(page.locator("#call-kept")).not_to_have_text("\u2013")

        await page.goto(str(api.base_url.join("/dashboard#/calls/gone-call")))
        await expect(page.locator("#call-error")).to_have_text(
            "The call \u201cgone-call\u201d was erased.", timeout=WAIT_MS
        )
