"""The dashboard's search of what was said, in a real headless Chromium against a real API and
worker: Enter in the search box lists the calls where the words were said, the words marked as
text (never markup), and a result opens the call's page and plays the recording from the
utterance that matched; the call's page downloads its transcript as WebVTT and SRT that parse."""

from __future__ import annotations

import base64
import io

import pytest
import srt
import webvtt
from playwright.async_api import Browser, expect

from jobs.ai import SpeechSource, Spoken
from settings import Settings
from tests.factories import packet
from tests.fakes import ScriptedAI
from tests.service.test_dashboard import (
    WAIT_MS,
    browser,  # noqa: F401  (the module's Chromium, a fixture)
    callstream,
    complete,
    connected,
    dashboard,
    stream,
)
from tests.service.test_recording import wait_state


async def test_enter_searches_what_was_said_and_a_result_opens_the_call_with_its_captions(
    browser: Browser,  # noqa: F811
    settings: Settings,
    ai: ScriptedAI,
):
    async with callstream(settings, ai) as api:
        await stream(api, "said-refund", 0, data="I want a <b>refund</b> for the router")
        await stream(api, "said-nothing", 0, data="hello there")
        for call_id in ("said-refund", "said-nothing"):
            await complete(api, call_id)
        for call_id in ("said-refund", "said-nothing"):
            await wait_state(api, call_id, "ARCHIVED", 30)
        async with dashboard(browser, api) as page:
            await connected(page)
            search = page.locator("#search")
            await search.fill("refund")
            await search.press("Enter")

            results = page.locator("#search-results li")
            await expect(results).to_have_count(1, timeout=WAIT_MS)
            await expect(results.first.locator("mark")).to_have_text("refund")
            await expect(results.first).to_contain_text("<b>")  # the caller's markup, as text
            await expect(page.locator("#search-note")).to_have_text("Said in 1 call(s):")

            await results.first.get_by_role("link").click()
            await expect(page.locator("#call-page")).to_be_visible(timeout=WAIT_MS)
            assert page.url.endswith("/dashboard#/calls/said-refund")

            captions = {}
            for fmt in ("vtt", "srt"):
                async with page.expect_download() as waiting:
                    await page.locator(f"#download-{fmt}").click()
                download = await waiting.value
                assert download.suggested_filename == f"said-refund.{fmt}"
                captions[fmt] = (await download.path()).read_text()

    (cue,) = webvtt.from_buffer(io.StringIO(captions["vtt"])).captions
    assert cue.voice == "caller"
    (subtitle,) = srt.parse(captions["srt"])
    assert "refund" in subtitle.content


class SaidLate(ScriptedAI):
    """Every window's words, said from 1.5 s into it: a match that is not at the call's start."""

    async def transcribe_segments(
        self, call_id: str, audio: SpeechSource, *, words: bool = False
    ) -> list[Spoken]:
        self._next(call_id, "transcription")
        seconds = (await audio.facts()).seconds
        return [Spoken(1.5, seconds, "about my refund please")]


async def test_a_search_result_plays_the_call_from_the_utterance_that_matched(
    browser: Browser,  # noqa: F811
    settings: Settings,
):
    silence = base64.b64encode(bytes([0xFF]) * 160).decode()  # 20 ms of μ-law silence
    async with callstream(settings, SaidLate()) as api:
        packets = [packet(n, silence) for n in range(150)]  # 3 s
        answer = await api.post("/v1/call/stream/late/batch", json={"packets": packets})
        assert answer.status_code == 202
        await complete(api, "late")
        await wait_state(api, "late", "ARCHIVED", 30)
        async with dashboard(browser, api) as page:
            await connected(page)
            await page.locator("#search").fill("refund")
            await page.locator("#search").press("Enter")
            result = page.locator("#search-results li a")
            await expect(result).to_have_count(1, timeout=WAIT_MS)
            await page.evaluate(
                """() => {
                    const audio = document.getElementById("call-audio");
                    window.seeks = [];
                    audio.addEventListener("seeking", () => window.seeks.push(audio.currentTime));
                }"""
            )
            await result.click()
            await page.wait_for_function("() => window.seeks.length >= 1", timeout=WAIT_MS)
            seeks = await page.evaluate("window.seeks")

    assert seeks[0] == pytest.approx(1.5, abs=0.05)
