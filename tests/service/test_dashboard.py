"""The supervisor's dashboard (GET /dashboard): the route's answers over HTTP, then the page in a
real headless Chromium (tests/browser.py) against a real API server (uvicorn) and a real arq
worker with the scripted AI, on the suite's PostgreSQL and Redis. Every wait is Playwright's
`expect` with a generous timeout: the page must get there, however slow the machine."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from httpx import AsyncClient
from playwright.async_api import Browser, Locator, Page, Route, expect
from pydantic import SecretStr
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from core.audio import mulaw_encode
from db.feed_events import CALL_EVENT, AttemptEvent
from db.keys import EVENTS
from db.states import CallState
from jobs.ai import (
    PermanentAIError,
    SpeechSource,
    Spoken,
    TransientAIError,
    sentiment_of,
    transcript_of,
)
from jobs.audio import TrackAudio
from service.app import create_asgi
from service.routes.dashboard import CONTENT_SECURITY_POLICY
from settings import Settings
from tests.browser import chromium
from tests.conftest import ROOT
from tests.dashboard.modules import page_modules
from tests.factories import packet
from tests.fakes import ScriptedAI
from tests.serving import serving, worker_running

# The page, its style, and every script module it loads (tests/dashboard/modules.py).
ASSETS = {
    "/dashboard": "text/html; charset=utf-8",
    "/dashboard/dashboard.css": "text/css; charset=utf-8",
    **{f"/dashboard/{m.name}": "text/javascript; charset=utf-8" for m in page_modules()},
}
INGEST, SUPERVISOR, ADMIN = "ingest-key-dash", "supervisor-key-dash", "admin-key-dash"
WAIT_MS = 20_000  # for the page to show what the server did: generous, for a loaded CI machine
PROGRESS_S = 0.1  # a live call's progress events, at most this often (the default is 1 s)
RouteHandler = Callable[[Route], Awaitable[None]]
MARKUP = "the problem is <b>resolved</b> great"  # shown as text, never as markup
SCREENSHOT = ROOT / "test-output" / "dashboard.png"
UNKNOWN = "\u2013"  # what the tables show for a value not known yet (an en dash)
EN_DASH = "\u2013"  # between an utterance's start and end
# Why the first call fails: the scripted AI refuses its text, and the reason names the window.
REFUSED = (
    "transcription failed permanently: audio format not supported (transcribing the caller's text)"
)


def keyed(settings: Settings, **more: object) -> Settings:
    keys = {
        "ingest_api_keys": SecretStr(INGEST),
        "supervisor_api_keys": SecretStr(SUPERVISOR),
        "admin_api_keys": SecretStr(ADMIN),
    }
    return settings.model_copy(update={**keys, **more})


# --- the route, over HTTP -----------------------------------------------------------------------


async def test_the_page_and_its_assets_come_with_their_types_and_a_self_only_policy(
    client: AsyncClient,
):
    for path, content_type in ASSETS.items():
        answer = await client.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"] == content_type
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-cache"
        assert answer.headers["etag"].startswith('"')
        assert answer.content
    policy = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["default-src"] == "'none'"
    assert {policy[d] for d in ("script-src", "style-src", "connect-src")} == {"'self'"}
    assert policy["frame-ancestors"] == "'none'"
    # A call's recording plays from a Blob the page fetched with the key: blob: and no more.
    assert policy["media-src"] == "blob:"


async def test_a_revalidation_naming_the_etag_gets_304_without_a_body(client: AsyncClient):
    for path in ASSETS:
        etag = (await client.get(path)).headers["etag"]
        again = await client.get(path, headers={"if-none-match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        changed = await client.get(path, headers={"if-none-match": '"another"'})
        assert changed.status_code == 200


async def test_head_answers_the_headers_alone(client: AsyncClient):
    answer = await client.head("/dashboard")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == ASSETS["/dashboard"]
    assert answer.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/index.html",
        "/dashboard/app.js",
        "/dashboard/dashboard.js.map",
        "/dashboard/../settings.py",
        "/dashboard/%2e%2e/settings.py",
    ],
)
async def test_an_unknown_asset_is_404(client: AsyncClient, path: str):
    answer = await client.get(path)
    assert answer.status_code == 404
    assert answer.json()["code"] == "not_found"


async def test_with_keys_on_the_page_needs_none_but_its_data_and_other_paths_do(
    settings: Settings,
):
    app = create_asgi(keyed(settings))
    async with serving(app) as address, AsyncClient(base_url=f"http://{address}") as client:
        for path in ASSETS:
            assert (await client.get(path)).status_code == 200, path
        for path in ("/v1/calls", "/v1/system", "/v1/events", "/dashboard/../v1/calls"):
            assert (await client.get(path)).status_code == 401, path
        # A module name the page does not have is no file: nothing is served for it.
        assert (await client.get("/dashboard/other.js")).status_code == 404


def test_the_page_loads_only_its_own_files_and_writes_no_server_text_as_html():
    source = ROOT / "service" / "dashboard"
    page = (source / "index.html").read_text()
    # The policy refuses inline code and style: the page must not need any.
    for inline in ("<script>", "<style", " style=", " on" + "click="):
        assert inline not in page, inline
    for own in (
        '<script type="module" src="/dashboard/dashboard.js"></script>',
        'href="/dashboard/dashboard.css"',
    ):
        assert own in page, own
    assert page.count("<script") == 1  # the entry module imports the rest
    for remote in ("http://", "https://", "//"):  # no CDN, nothing from elsewhere
        assert remote not in page, remote
    modules = page_modules()
    assert {m.name for m in modules} >= {"dashboard.js", "contract.js", "feed.js", "model.js"}
    for module in modules:
        script = module.read_text()
        # What the server says is text: no HTML is ever built from it.
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in script, (module.name, sink)
        # Only the page's own modules, by a relative path: nothing from elsewhere.
        assert not re.search(r'\bfrom "(?!\./)', script), module.name
        assert "import(" not in script, module.name


# --- the page, in a real browser ----------------------------------------------------------------


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@contextlib.asynccontextmanager
async def callstream(settings: Settings, ai: ScriptedAI) -> AsyncIterator[AsyncClient]:
    """The API on a real socket plus a worker; yields a client of that API (base_url set)."""
    fast = settings.model_copy(update={"events_progress_interval_s": PROGRESS_S})
    async with (
        serving(create_asgi(fast)) as address,
        # health_check_interval: the system strip shows the worker's heartbeat
        worker_running(fast, ai, health_check_interval=1),
        AsyncClient(base_url=f"http://{address}", headers={"x-api-key": INGEST}) as api,
    ):
        yield api


@contextlib.asynccontextmanager
async def dashboard(
    browser: Browser,
    api: AsyncClient,
    route: tuple[str | re.Pattern[str], RouteHandler] | None = None,
) -> AsyncIterator[Page]:
    """The dashboard in a fresh tab of a laptop-sized window (requests matching `route`'s
    pattern go to its handler); fails the test on a script error."""
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    if route is not None:
        await page.route(*route)
    try:
        await page.goto(str(api.base_url.join("/dashboard")))
        yield page
    finally:
        await context.close()
    assert errors == [], errors


async def stream(api: AsyncClient, call_id: str, *sequences: int, data: str = "") -> None:
    for sequence in sequences:
        answer = await api.post(
            f"/v1/call/stream/{call_id}", json=packet(sequence, data or f"chunk-{sequence}")
        )
        assert answer.status_code in (200, 202), answer.text


async def complete(api: AsyncClient, call_id: str) -> None:
    assert (await api.post(f"/v1/call/complete/{call_id}")).status_code == 202


def row(page: Page, table: str, call_id: str) -> Locator:
    return page.locator(f'#{table}-table tbody tr[data-call-id="{call_id}"]')


def cell(page: Page, table: str, call_id: str, key: str) -> Locator:
    return row(page, table, call_id).locator(f'td[data-key="{key}"]')


async def connected(page: Page) -> None:
    await expect(page.locator("#board")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#feed-status")).to_have_attribute(
        "data-state", "connected", timeout=WAIT_MS
    )


async def calls_read(page: Page) -> None:
    """The board has read the calls and is not reading them again (its data-calls says so)."""
    await expect(page.locator("#board")).to_have_attribute("data-calls", "read", timeout=WAIT_MS)


async def live_counters(page: Page, call_id: str, **expected: str) -> None:
    for key, text in expected.items():
        await expect(cell(page, "live", call_id, key)).to_have_text(text, timeout=WAIT_MS)


async def test_a_streamed_call_appears_changes_state_and_shows_its_sentiment_without_a_reload(
    browser: Browser, settings: Settings, ai: ScriptedAI, tmp_path: Path
):
    ai.fail("transcription", PermanentAIError("audio format not supported"))
    async with callstream(settings, ai) as api, dashboard(browser, api) as page:
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        await connected(page)
        await page.evaluate("window.stillTheSamePage = true")

        # The first call the worker takes fails (the scripted AI refuses its audio).
        await stream(api, "call-refused", 0, 1, data="the line is broken")
        await complete(api, "call-refused")
        await expect(cell(page, "failed", "call-refused", "reason")).to_have_text(
            REFUSED, timeout=WAIT_MS
        )

        # Other calls going on, for the screenshot: their counters come with later packets.
        await stream(api, "call-quiet", 0)
        await stream(api, "call-patchy", 0)

        # The call under test: a gap (3) and a duplicate (2), its text holding markup.
        await stream(api, "call-happy", 1, data="hello thanks for calling")
        await expect(cell(page, "live", "call-happy", "state")).to_have_text(
            "IN_PROGRESS", timeout=WAIT_MS
        )
        await stream(api, "call-happy", 2, 4, 2, data=MARKUP)
        await asyncio.sleep(PROGRESS_S * 1.5)  # pacing, not a check: the next packet reports
        await stream(api, "call-happy", 5, data="perfect")
        await live_counters(page, "call-happy", packets="4", gaps="1", duplicates="1")

        await complete(api, "call-happy")
        await expect(row(page, "live", "call-happy")).to_have_count(0, timeout=WAIT_MS)
        spoken = ["hello thanks for calling", *[MARKUP] * 2, "perfect"]
        expected = sentiment_of(transcript_of(spoken))
        assert expected.label == "positive"
        await expect(cell(page, "finished", "call-happy", "sentiment")).to_have_text(
            f"positive {expected.score:.2f}", timeout=WAIT_MS
        )
        transcript = cell(page, "finished", "call-happy", "transcript")
        await expect(transcript).to_contain_text("<b>resolved</b>", timeout=WAIT_MS)
        await expect(page.locator("#finished-table b")).to_have_count(0)  # text, not markup
        await expect(cell(page, "finished", "call-happy", "packets")).to_have_text(
            "4", timeout=WAIT_MS
        )

        assert await page.evaluate("window.stillTheSamePage") is True
        assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1
        assert navigations == []
        await expect(page.locator("#sys-worker")).not_to_have_text(
            "no worker running", timeout=WAIT_MS
        )
        await stream(api, "call-quiet", 1, 2, 3)
        await stream(api, "call-patchy", 3, 3, 7)
        await asyncio.sleep(PROGRESS_S * 1.5)  # pacing, as above
        await stream(api, "call-quiet", 4)
        await stream(api, "call-patchy", 9)
        await live_counters(page, "call-patchy", packets="4", gaps="6", duplicates="1")
        await expect(page.locator("#sys-live")).to_have_text("2", timeout=WAIT_MS)
        await screenshot(page, tmp_path)

        # A failed row opens its call's page too: why it failed, and no recording of text.
        await row(page, "failed", "call-refused").get_by_role("link", name="call-refused").click()
        await expect(page.locator("#call-state")).to_have_text("FAILED", timeout=WAIT_MS)
        await expect(page.locator("#call-failure")).to_have_text(f"Failed: {REFUSED}")
        await expect(page.locator("#audio-note")).to_have_text(
            "No recording: this call's packets are text, not audio.", timeout=WAIT_MS
        )
        await expect(page.locator("#call-audio")).to_be_hidden()
        await page.get_by_role("link", name="← All calls").click()
        await expect(row(page, "live", "call-patchy")).to_be_visible()


async def screenshot(page: Page, tmp_path: Path, name: str = SCREENSHOT.name) -> None:
    """Under the test's output, and in test-output/ (git-ignored) for a person."""
    taken = tmp_path / name
    await page.screenshot(path=str(taken), full_page=True)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(taken, SCREENSHOT.parent / name)


async def test_replay_of_a_failed_call_with_an_admin_key_moves_it_on(
    browser: Browser, settings: Settings, ai: ScriptedAI
):
    down = [TransientAIError("provider down")] * 2
    ai.fail("transcription", *down)
    keys_on = keyed(settings, ai_max_attempts=2)
    async with callstream(keys_on, ai) as api, dashboard(browser, api) as page:
        await expect(page.locator("#key-panel")).to_be_visible(timeout=WAIT_MS)
        await page.locator("#key-input").fill(ADMIN)
        await page.locator("#key-input").press("Enter")
        await connected(page)

        await stream(api, "call-dead", 0, 1, data="thank you so much")
        await complete(api, "call-dead")
        reason = cell(page, "failed", "call-dead", "reason")
        await expect(reason).to_have_text(
            "transcription failed after 2 attempts: provider down (transcribing the caller's text)",
            timeout=WAIT_MS,
        )

        await row(page, "failed", "call-dead").get_by_role("button", name="Replay").click()

        await expect(row(page, "failed", "call-dead")).to_have_count(0, timeout=WAIT_MS)
        await expect(page.locator("#replay-note")).to_have_text("Replay of call-dead accepted.")
        await expect(cell(page, "finished", "call-dead", "sentiment")).to_have_text(
            "positive 1.00", timeout=WAIT_MS
        )
        assert ai.count("transcription") == 3


async def test_search_filters_by_call_id_and_every_column_sorts_by_click_or_keyboard(
    browser: Browser, settings: Settings, ai: ScriptedAI
):
    async with callstream(settings, ai) as api:
        await stream(api, "alpha-1", 0, 1, 2)
        await stream(api, "beta-2", 0)
        await stream(api, "gamma-3", 0, 1)
        async with dashboard(browser, api) as page:
            await connected(page)
            live = page.locator("#live-table tbody tr")
            await expect(live).to_have_count(3, timeout=WAIT_MS)

            search = page.locator("#search")
            await search.fill("BETA")
            await expect(live).to_have_count(1)
            await expect(live.first).to_have_attribute("data-call-id", "beta-2")
            await search.fill("nobody-here")
            await expect(page.locator("#search-note")).to_have_text(
                "No call matches “nobody-here”."
            )
            await search.fill("")
            await expect(live).to_have_count(3)

            packets = page.locator('#live-table th[data-key="packets"]')
            await packets.get_by_role("button").click()
            await expect(packets).to_have_attribute("aria-sort", "ascending")
            await expect_order(live, ["beta-2", "gamma-3", "alpha-1"])

            # From the keyboard: the headers are buttons, reached with Tab, pressed with Enter.
            await search.focus()
            for _ in range(4):  # Call, State, Duration, Packets
                await page.keyboard.press("Tab")
            focused = page.locator(":focus")
            await expect(focused).to_have_text("Packets▲")
            outline = await focused.evaluate("b => getComputedStyle(b).outlineStyle")
            assert outline == "solid"  # the focus is visible
            await page.keyboard.press("Enter")
            await expect(packets).to_have_attribute("aria-sort", "descending")
            await expect_order(live, ["alpha-1", "gamma-3", "beta-2"])

            call = page.locator('#live-table th[data-key="id"]')
            await call.get_by_role("button").click()
            await expect(packets).not_to_have_attribute("aria-sort", "descending")
            await expect(call).to_have_attribute("aria-sort", "ascending")
            await expect_order(live, ["alpha-1", "beta-2", "gamma-3"])


async def expect_order(rows: Locator, call_ids: list[str]) -> None:
    for index, call_id in enumerate(call_ids):
        await expect(rows.nth(index)).to_have_attribute("data-call-id", call_id, timeout=WAIT_MS)


async def test_with_keys_on_the_page_asks_for_one_refuses_a_wrong_one_and_keeps_it_out_of_urls(
    browser: Browser, settings: Settings, ai: ScriptedAI
):
    ai.fail("transcription", PermanentAIError("unreadable"))
    async with callstream(keyed(settings), ai) as api, dashboard(browser, api) as page:
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        panel, error = page.locator("#key-panel"), page.locator("#key-error")
        await expect(panel).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#key-reason")).to_have_text(
            "This Callstream needs a supervisor API key."
        )
        await expect(page.locator("#board")).to_be_hidden()

        for key, refusal in [
            ("not-a-key", "That key was refused: it is not a valid API key."),
            (INGEST, "That key may not read calls: this API key's role (ingest) may not do"),
        ]:
            await page.locator("#key-input").fill(key)
            await page.get_by_role("button", name="Connect").click()
            await expect(error).to_contain_text(refusal, timeout=WAIT_MS)
            await expect(page.locator("#board")).to_be_hidden()

        await page.locator("#key-input").fill(SUPERVISOR)
        await page.get_by_role("button", name="Connect").click()
        await connected(page)
        await expect(panel).to_be_hidden()

        # A supervisor may look but not replay: the page says what it takes.
        await stream(api, "call-x", 0)
        await complete(api, "call-x")
        await (
            row(page, "failed", "call-x")
            .get_by_role("button", name="Replay")
            .click(timeout=WAIT_MS)
        )
        await expect(page.locator("#replay-note")).to_contain_text(
            "Replay needs an admin key", timeout=WAIT_MS
        )

        # The key lives in this tab's sessionStorage, so a reload keeps it; never in a URL.
        await page.reload()
        await connected(page)
        assert await page.evaluate("sessionStorage.getItem('callstream.apiKey')") == SUPERVISOR
        assert urls
        assert not [u for u in urls if any(k in u for k in (SUPERVISOR, INGEST))]


async def test_the_feed_parser_reads_events_however_the_stream_is_cut_into_chunks(
    browser: Browser, settings: Settings, ai: ScriptedAI
):
    stream_text = (
        ": connected\r\nretry: 1500\r\n\r\n"
        'id: 1-0\r\nevent: state\r\ndata: {"a": 1}\r\n\r\n'
        "id: 2-0\nevent: progress\ndata: line one\ndata:line two\n\n"
        ": ping\n\n"
        "event: reset\rdata: {}\r\r"
        "data: no end yet"
    )
    async with callstream(settings, ai) as api, dashboard(browser, api) as page:
        await connected(page)
        # Every cut into two chunks, and one character at a time: the same events.
        results = await page.evaluate(
            """async (text) => {
                const { sseParser } = await import("/dashboard/feed.js");
                const parse = (chunks) => {
                  const seen = [];
                  const push = sseParser({
                    onEvent: (event) => seen.push(event),
                    onRetry: (ms) => seen.push({ retry: ms }),
                  });
                  chunks.forEach(push);
                  return JSON.stringify(seen);
                };
                const cuts = [...Array(text.length + 1).keys()];
                const all = cuts.map((at) => parse([text.slice(0, at), text.slice(at)]));
                all.push(parse([...text]));
                return [...new Set(all)].map((found) => JSON.parse(found));
              }""",
            stream_text,
        )
    assert results == [
        [
            {"retry": 1500},
            {"type": "state", "data": '{"a": 1}', "id": "1-0"},
            {"type": "progress", "data": "line one\nline two", "id": "2-0"},
            {"type": "reset", "data": "{}", "id": "2-0"},  # the last id is kept, as specified
        ]
    ]


async def test_the_feed_resumes_after_a_drop_with_last_event_id_and_starts_over_on_reset(
    browser: Browser, settings: Settings, ai: ScriptedAI
):
    asked: list[dict[str, str]] = []
    stub_event = {"type": "state", "call_id": "call-from-before", "state": "IN_PROGRESS"}
    answers = [
        # The first connection gives one event, then drops.
        f": connected\nretry: 100\n\nid: 5-0\nevent: state\ndata: {json.dumps(stub_event)}\n\n",
        # The second finds its position gone: reset, then drops again.
        'event: reset\ndata: {"type": "reset", "reason": "trimmed"}\n\n',
    ]

    stub_seen = asyncio.Event()

    async def feed(route: Route) -> None:
        asked.append(await route.request.all_headers())
        if len(asked) == 2:
            await stub_seen.wait()  # the reset only once the page has shown the stub's event
        if len(asked) <= len(answers):
            sse = {"content-type": "text/event-stream", "cache-control": "no-cache"}
            await route.fulfill(status=200, headers=sse, body=answers[len(asked) - 1])
        else:  # then the real feed, from now on
            headers = {k: v for k, v in asked[-1].items() if k != "last-event-id"}
            await route.continue_(headers=headers)

    async with callstream(settings, ai) as api:
        await stream(api, "call-real", 0)
        async with dashboard(browser, api, route=("**/v1/events", feed)) as page:
            await expect(row(page, "live", "call-from-before")).to_have_count(1, timeout=WAIT_MS)
            await expect(row(page, "live", "call-real")).to_have_count(1, timeout=WAIT_MS)
            stub_seen.set()
            # The reset re-read the calls: the stub's call, unknown to the API, is gone.
            await expect(row(page, "live", "call-from-before")).to_have_count(0, timeout=WAIT_MS)
            await connected(page)
            await stream(api, "call-after", 0)
            await expect(row(page, "live", "call-after")).to_have_count(1, timeout=WAIT_MS)
    assert "last-event-id" not in asked[0]
    assert asked[1]["last-event-id"] == "5-0"
    assert asked[2]["last-event-id"] == "5-0"


async def test_a_calls_page_reads_its_feed_with_the_same_reader_resuming_and_reading_afresh(
    browser: Browser, settings: Settings, ai: ScriptedAI
):
    # A call's page follows its own feed (?call_id=) with the board's reader (feed.js): after a
    # drop it resumes with Last-Event-ID, and a `reset` makes it read the whole call again.
    asked: list[dict[str, str]] = []
    transcript_reads: list[str] = []  # every request's URL, from the page's opening on
    real_feed_asked = asyncio.Event()
    progress = {"type": "progress", "call_id": "call-paged", "state": "IN_PROGRESS"}
    answers = [
        f": connected\nretry: 100\n\nid: 7-0\nevent: progress\ndata: {json.dumps(progress)}\n\n",
        'event: reset\ndata: {"type": "reset", "reason": "trimmed"}\n\n',
    ]

    async def call_feed(route: Route) -> None:
        asked.append(await route.request.all_headers())
        if len(asked) <= len(answers):
            sse = {"content-type": "text/event-stream", "cache-control": "no-cache"}
            await route.fulfill(status=200, headers=sse, body=answers[len(asked) - 1])
        else:  # then the real feed of the call
            headers = {k: v for k, v in asked[-1].items() if k != "last-event-id"}
            real_feed_asked.set()
            await route.continue_(headers=headers)

    async with callstream(settings, ai) as api:
        await stream(api, "call-paged", 0, 1)
        async with dashboard(
            browser, api, route=(re.compile(r"/v1/events\?call_id="), call_feed)
        ) as page:
            page.on("request", lambda r: transcript_reads.append(r.url))
            await connected(page)
            await page.evaluate("location.hash = '#/calls/call-paged'")
            await expect(page.locator("#call-state")).to_have_text("IN_PROGRESS", timeout=WAIT_MS)
            # The call's packets (a text call's one track, or the call's total: the last row).
            packets = page.locator('#tracks-table tbody td[data-key="packets"]').last
            await expect(packets).to_have_text("2", timeout=WAIT_MS)
            # The real feed, from the third connection on (it resumes: no read of what came before,
            # so the packet is sent once it has subscribed): a new packet shows without a reload.
            await asyncio.wait_for(real_feed_asked.wait(), WAIT_MS / 1000)
            await expect(page.locator("#call-feed")).to_have_attribute(
                "data-state", "connected", timeout=WAIT_MS
            )
            await expect(page.locator("#call-feed-text")).to_have_text("Live: following this call")
            await stream(api, "call-paged", 2)
            await expect(packets).to_have_text("3", timeout=WAIT_MS)
    assert "last-event-id" not in asked[0]
    assert asked[1]["last-event-id"] == "7-0"
    assert asked[2]["last-event-id"] == "7-0"
    # Read when the page subscribed first, and again after the reset.
    transcript = [u for u in transcript_reads if u.endswith("/v1/calls/call-paged/transcript")]
    assert len(transcript) >= 2, transcript_reads


HOLD_S = 120.0  # the AI's attempt timeout while HeldAI holds it: longer than any test's look
# What a speech model would hear in each party's tones (the caller's track 0, the agent's 1),
# one line a window: the caller unhappy, the agent pleasant (the mock's keyword sentiment).
# Together longer than a row's excerpt (140 characters): the call's page shows all of it.
HEARD = (
    (
        "my line has been broken since this morning and nobody called me back",
        "this is a terrible problem and I want a refund",
        "still bad",
    ),
    (
        "thanks for calling, I am happy to look into that for you right now",
        "great, it is resolved: you should have a good line again",
        "thanks",
    ),
)


class HeldAI(ScriptedAI):
    """The scripted AI, holding every transcription while `holding` until `released` is set (the
    call stays in PROCESSING_AI for as long as the test looks at it). A window of audio is heard
    as the next of its party's HEARD lines, over the whole window."""

    def __init__(self, holding: bool = True) -> None:
        super().__init__()
        self.holding = holding
        self.released = asyncio.Event()
        self.heard = [0, 0]

    async def transcribe_segments(
        self, call_id: str, audio: SpeechSource, *, words: bool = False
    ) -> list[Spoken]:
        if self.holding:
            await self.released.wait()
        spoken = await super().transcribe_segments(call_id, audio)
        if not isinstance(audio, TrackAudio):
            return spoken  # text packets: what they say
        track = audio.recording.lines[audio.channel].track
        lines, n = HEARD[track], self.heard[track]
        self.heard[track] += 1
        return [Spoken(0.0, audio.seconds, lines[n % len(lines)])]


async def test_a_short_calls_counters_show_while_the_ai_works_and_once_finished(
    browser: Browser, settings: Settings
):
    # Issue 18: a call whose packets all come within one progress interval sends no progress
    # event (the first packet's event carries no counters), so the page learns its counters
    # from reading the call only. That read failing once must not leave it at "0 packets".
    ai = HeldAI()
    held = settings.model_copy(update={"ai_attempt_timeout_s": HOLD_S})
    refused: list[str] = []

    async def first_read_fails(route: Route) -> None:
        if not refused:
            refused.append(route.request.url)
            await route.abort()
        else:
            await route.continue_()

    async with (
        callstream(held, ai) as api,
        dashboard(browser, api, route=("**/v1/calls/call-short", first_read_fails)) as page,
    ):
        await connected(page)
        # The calls read, so this call is known from the feed alone (as on a page left open).
        await calls_read(page)
        batch = {"packets": [packet(s, f"word-{s}") for s in range(5)]}
        answer = await api.post("/v1/call/stream/call-short/batch", json=batch)
        assert answer.status_code in (200, 202), answer.text
        await expect(cell(page, "live", "call-short", "packets")).to_have_text(
            UNKNOWN, timeout=WAIT_MS
        )  # not known yet: a dash, never a made-up 0
        await complete(api, "call-short")
        await expect(cell(page, "live", "call-short", "state")).to_have_text(
            "PROCESSING_AI", timeout=WAIT_MS
        )
        await live_counters(page, "call-short", packets="5", gaps="0", duplicates="0")
        assert refused, "the page never read the call"

        ai.released.set()
        await expect(cell(page, "finished", "call-short", "packets")).to_have_text(
            "5", timeout=WAIT_MS
        )
        # A call shorter than a second: tenths, not "0 s".
        await expect(cell(page, "finished", "call-short", "duration")).to_have_text(
            re.compile(r"^\d\.\d s$")
        )


# --- one call's page (#/calls/<id>) -----------------------------------------------------------

TONES = {"inbound": 440.0, "outbound": 660.0}  # Hz: the caller and the agent, one each
FRAME = 160  # samples of one 20 ms frame at 8 kHz
BREATH = 40  # of every 50 frames, each party pauses from this one (talks 0.8 s, then 0.2 s)


def frame_payload(track: str, chunk: int) -> str:
    """20 ms of the track's tone (or of a pause: a live window is cut there) as base64 μ-law,
    as Twilio sends a media frame."""
    t = (np.arange(FRAME) + chunk * FRAME) / 8000
    loud = 0 if chunk % 50 >= BREATH else 8000
    samples = (loud * np.sin(2 * np.pi * TONES[track] * t)).astype(np.int16)
    return base64.b64encode(mulaw_encode(samples)).decode()


class TwoPartyCall:
    """A Twilio media stream with both tracks (`<Stream track="both_tracks">`)."""

    def __init__(self, ws: ClientConnection, call_id: str) -> None:
        self.ws, self.call_id, self.message = ws, call_id, 0

    async def send(self, event: str, **fields: Any) -> None:
        self.message += 1
        body = {"event": event, "sequenceNumber": str(self.message), "streamSid": "MZ2", **fields}
        await self.ws.send(json.dumps(body))

    async def start(self) -> None:
        fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        start = {"callSid": self.call_id, "streamSid": "MZ2", "mediaFormat": fmt}
        await self.send("start", start={**start, "tracks": ["inbound", "outbound"]})

    async def frames(self, first: int, last: int) -> None:
        """Chunks first..last (1-based, as Twilio counts them) of both tracks, interleaved."""
        for chunk in range(first, last + 1):
            for track in TONES:
                media = {
                    "track": track,
                    "chunk": str(chunk),
                    "timestamp": str((chunk - 1) * 20),
                    "payload": frame_payload(track, chunk - 1),
                }
                await self.send("media", media=media)

    async def stop(self) -> None:
        await self.send("stop", stop={"callSid": self.call_id})


def track_cell(page: Page, track: str, key: str) -> Locator:
    return page.locator(f'#tracks-table tbody tr[data-track="{track}"] td[data-key="{key}"]')


async def playable_seconds(page: Page, at_least: float) -> float:
    """Waits until the player holds a Blob of at least `at_least` seconds; returns its length."""
    handle = await page.wait_for_function(
        """(least) => {
            const audio = document.getElementById("call-audio");
            return audio.src.startsWith("blob:") && audio.duration >= least && audio.duration;
        }""",
        arg=at_least,
        timeout=WAIT_MS,
    )
    return float(await handle.json_value())


async def test_a_calls_page_from_its_row_follows_it_live_plays_its_recording_and_shows_history(
    browser: Browser, settings: Settings, tmp_path: Path
):
    ai = HeldAI(holding=False)  # live windows pass; the final run is held once the call ends
    # Segments of 1 s: the recording grows while the call goes on (a `segment` event each), and
    # each flush transcribes the windows ready (`utterance` events). Speakers named by the API.
    keys_on = keyed(
        settings, segment_seconds=1.0, ai_attempt_timeout_s=HOLD_S, speaker_names=SPEAKERS
    )
    async with callstream(keys_on, ai) as api, dashboard(browser, api) as page:
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        await page.locator("#key-input").fill(SUPERVISOR)
        await page.locator("#key-input").press("Enter")
        await connected(page)

        media_url = f"ws://{api.base_url.host}:{api.base_url.port}/v1/call/media"
        async with connect(media_url, additional_headers={"x-api-key": INGEST}) as ws:
            call = TwoPartyCall(ws, "call-two")
            await call.start()
            # 0.4 s of each party: less than a window, so every utterance comes after the page
            # is following the call (on its feed, not from its first read).
            await call.frames(1, 20)

            # The row's link, from the keyboard, opens the call's page in the same page.
            link = row(page, "live", "call-two").get_by_role("link", name="call-two")
            await link.focus()
            await page.keyboard.press("Enter")
            await expect(page.locator("#call-page")).to_be_visible(timeout=WAIT_MS)
            await expect(page.locator("#board")).to_be_hidden()
            assert page.url.endswith("/dashboard#/calls/call-two")
            await expect(page.locator("#call-title")).to_be_focused()
            await expect(page.locator("#call-state")).to_have_text("IN_PROGRESS", timeout=WAIT_MS)
            await expect(page.locator("#call-feed-text")).to_have_text("Live: following this call")
            for track in TONES:
                await expect(track_cell(page, track, "packets")).to_have_text("20", timeout=WAIT_MS)
                await expect(track_cell(page, track, "gaps")).to_have_text("0")
                await expect(track_cell(page, track, "first")).to_have_text("1")
            await expect(page.locator("#utterances-note")).to_have_text(
                "Nothing transcribed yet: utterances appear here while the call goes on.",
                timeout=WAIT_MS,
            )

            # Live: more frames move the counters, stored segments reach the player, and each
            # party's first window (cut in one of their pauses) shows as it is transcribed.
            await call.frames(21, 110)
            for track in TONES:
                await expect(track_cell(page, track, "packets")).to_have_text(
                    "110", timeout=WAIT_MS
                )
                await expect(track_cell(page, track, "last")).to_have_text("110")
            await expect(track_cell(page, "total", "packets")).to_have_text("220")
            assert await playable_seconds(page, 0.5) > 0
            await live_utterances_of_both_parties(page)
            await expect(page.locator("#call-state")).to_have_text("IN_PROGRESS")
            ai.holding = True
            await call.stop()

        await expect(page.locator("#call-state")).to_have_text("PROCESSING_AI", timeout=WAIT_MS)
        ai.released.set()
        await expect(page.locator("#call-state")).to_have_text("ARCHIVED", timeout=WAIT_MS)
        await expect(page.locator("#call-feed-text")).to_have_text("Finished")
        to_states = page.locator("#transitions-table tbody tr td:nth-child(2)")
        await expect(to_states).to_have_text(
            ["IN_PROGRESS", "COMPLETED", "PROCESSING_AI", "ARCHIVED"], timeout=WAIT_MS
        )
        steps = page.locator("#ai-table tbody tr td:first-child")
        await expect(steps.first).to_have_text("transcription", timeout=WAIT_MS)
        await expect(steps.last).to_have_text("sentiment", timeout=WAIT_MS)
        read = await api.get("/v1/calls/call-two/transcript", headers={"x-api-key": SUPERVISOR})
        said = read.json()
        assert len(said["transcript"]) > 140  # more than a row's excerpt
        await expect(page.locator("#call-transcript")).to_have_text(said["transcript"])
        await the_conversation_once_archived(page, said)
        # The whole call once ARCHIVED: 110 frames of 20 ms, caller left and agent right.
        seconds = await playable_seconds(page, 2.1)
        assert seconds == pytest.approx(2.2, abs=0.05)
        await expect(page.locator("#audio-note")).to_contain_text(
            "stereo: left the caller, right the agent", timeout=WAIT_MS
        )
        await screenshot(page, tmp_path, "dashboard-call.png")
        await utterances_play_from_their_start(page, said["utterances"])

        # Back to the list from the keyboard: the back link is one Shift+Tab from the title.
        await page.locator("#call-title").focus()
        await page.keyboard.press("Shift+Tab")
        await expect(page.locator(":focus")).to_have_text("← All calls")
        await page.keyboard.press("Enter")
        await expect(page.locator("#board")).to_be_visible()
        await expect(page.locator("#call-page")).to_be_hidden()
        finished = row(page, "finished", "call-two").get_by_role("link", name="call-two")
        await expect(finished).to_be_focused(timeout=WAIT_MS)  # where the supervisor left

        # A finished row opens it again, read afresh; the browser's Back returns to the list.
        await finished.click()
        await expect(page.locator("#call-state")).to_have_text("ARCHIVED", timeout=WAIT_MS)
        await expect(track_cell(page, "outbound", "packets")).to_have_text("110", timeout=WAIT_MS)
        await expect(page.locator("#utterances li")).to_have_count(len(said["utterances"]))
        assert await playable_seconds(page, 2.1) > 0
        await page.go_back()
        await expect(page.locator("#board")).to_be_visible()

    # The key went in headers only, the recording's request included.
    assert any(u.endswith("/v1/calls/call-two/audio") for u in urls)
    assert not [u for u in urls if SUPERVISOR in u or INGEST in u]


async def test_a_live_two_track_audio_call_stays_in_progress_with_its_duration_running(
    browser: Browser, settings: Settings, redis: Redis
):
    # Issue 23: live transcription publishes `attempt` events while the call is IN_PROGRESS;
    # the board took any attempt for "the AI has the call" and showed PROCESSING_AI with its
    # duration stopped. A live attempt (`live: true`) leaves the call's state alone.
    ai = HeldAI(holding=False)  # every live window is transcribed at once
    live = settings.model_copy(update={"segment_seconds": 1.0, "ai_attempt_timeout_s": HOLD_S})
    async with callstream(live, ai) as api, dashboard(browser, api) as page:
        await connected(page)
        await calls_read(page)
        media_url = f"ws://{api.base_url.host}:{api.base_url.port}/v1/call/media"
        async with connect(media_url) as ws:
            call = TwoPartyCall(ws, "call-live-audio")
            await call.start()
            await call.frames(1, 110)  # 2.2 s of each party: segments stored, windows transcribed
            # The page has applied a live attempt: the attempt's number and its live step show.
            await expect(cell(page, "live", "call-live-audio", "attempt")).to_have_text(
                "1", timeout=WAIT_MS
            )
            await expect(cell(page, "live", "call-live-audio", "step")).to_have_text(
                "live transcription"
            )
            await expect(cell(page, "live", "call-live-audio", "state")).to_have_text("IN_PROGRESS")
            # Its duration runs on (the board redraws every second), though no packet comes.
            duration = cell(page, "live", "call-live-audio", "duration")
            shown = await duration.text_content()
            await expect(duration).not_to_have_text(shown or "", timeout=WAIT_MS)
            await expect(cell(page, "live", "call-live-audio", "state")).to_have_text("IN_PROGRESS")
            # What the feed said: live attempts, each of a call IN_PROGRESS, each valid.
            told = [
                CALL_EVENT.validate_json(fields[b"e"])
                for _, fields in await redis.xrange(EVENTS)
                if b'"call-live-audio"' in fields[b"e"]
            ]
            attempts = [e for e in told if isinstance(e, AttemptEvent)]
            assert attempts, told
            assert all(a.live and a.state is CallState.IN_PROGRESS for a in attempts), attempts
            await call.stop()
        await expect(cell(page, "live", "call-live-audio", "state")).not_to_have_text(
            "IN_PROGRESS", timeout=WAIT_MS
        )


SPEAKERS = ("Robin", "Sam")  # SPEAKER_NAMES: the caller's, then the agent's


def utterances(page: Page, track: str | None = None) -> Locator:
    return page.locator("#utterances li" + (f'[data-track="{track}"]' if track else ""))


def speaker_cell(page: Page, track: str, key: str) -> Locator:
    return page.locator(f'#speakers-table tbody tr[data-track="{track}"] td[data-key="{key}"]')


async def live_utterances_of_both_parties(page: Page) -> None:
    """Before the call ends: each party's first line, with its name, side, time and sentiment,
    and their figures so far."""
    for (track, name, role), heard in zip(
        (("inbound", SPEAKERS[0], "caller"), ("outbound", SPEAKERS[1], "agent")), HEARD, strict=True
    ):
        first = utterances(page, track).first
        await expect(first.locator(".said")).to_have_text(heard[0], timeout=WAIT_MS)
        await expect(first.locator(".who")).to_have_text(f"{name} ({role})")
        await expect(first.locator(".when")).to_have_text(re.compile(rf"^0:00{EN_DASH}0:0\d$"))
        await expect(speaker_cell(page, track, "speaker")).to_have_text(name)
    await expect(utterances(page, "inbound").first.locator(".badge")).to_have_text("negative -1.00")
    await expect(utterances(page, "outbound").first.locator(".badge")).to_have_text("positive 1.00")
    await expect(page.locator("#speakers-note")).to_contain_text("So far")
    await expect(page.locator("#conv-silence")).to_have_text(UNKNOWN)


def tenths(s: float) -> str:
    """A duration as the page writes one under 10 s (formatDuration)."""
    return f"{math.floor(s * 10) / 10:.1f} s"


async def the_conversation_once_archived(page: Page, said: dict[str, Any]) -> None:
    """Every utterance once, by time, as the API lists them (the feed's and the re-read's
    merged), and the call's figures per speaker, silence and overlap."""
    listed = [u["text"] for u in said["utterances"]]
    assert len(listed) >= 4, said  # at least one live window and the last, of each party
    await expect(page.locator("#utterances li .said")).to_have_text(listed, timeout=WAIT_MS)
    await expect(page.locator("#utterance-count")).to_have_text(str(len(listed)))
    conversation = said["conversation"]
    await expect(page.locator("#conv-silence")).to_have_text(
        tenths(conversation["silence_s"]), timeout=WAIT_MS
    )
    overlaps = conversation["overlap_count"]
    await expect(page.locator("#conv-overlap")).to_have_text(
        f"{overlaps} {'time' if overlaps == 1 else 'times'} · {tenths(conversation['overlap_s'])}"
    )
    await expect(page.locator("#speakers-note")).to_have_text("")
    for name, figures in conversation["speakers"].items():
        track = figures["track"]
        await expect(speaker_cell(page, track, "speaker")).to_have_text(name)
        await expect(speaker_cell(page, track, "utterances")).to_have_text(
            str(figures["utterances"])
        )
        await expect(speaker_cell(page, track, "talk")).to_have_text(tenths(figures["talk_s"]))
        sentiment = figures["sentiment"]
        await expect(speaker_cell(page, track, "sentiment")).to_have_text(
            f"{sentiment['label']} {sentiment['score']:.2f}"
        )
        bars = speaker_cell(page, track, "timeline").locator("rect.bar")
        await expect(bars).to_have_count(figures["utterances"])
    assert conversation["speakers"][SPEAKERS[0]]["sentiment"]["label"] == "negative"
    assert conversation["speakers"][SPEAKERS[1]]["sentiment"]["label"] == "positive"


async def utterances_play_from_their_start(page: Page, said: list[dict[str, Any]]) -> None:
    """A click on an utterance, or Enter on it, moves the player to its start and plays."""
    await page.evaluate(
        """() => {
            const audio = document.getElementById("call-audio");
            window.seeks = [];
            audio.addEventListener("seeking", () => window.seeks.push(audio.currentTime));
        }"""
    )
    latest = max(range(len(said)), key=lambda i: said[i]["start_s"])
    assert said[latest]["start_s"] > 0.5, said
    await utterances(page).nth(latest).locator("button").click()
    await page.wait_for_function("() => window.seeks.length === 1", timeout=WAIT_MS)
    assert await page.evaluate("window.seeks[0]") == pytest.approx(
        said[latest]["start_s"], abs=0.05
    )
    await page.wait_for_function(
        "() => !document.getElementById('call-audio').paused", timeout=WAIT_MS
    )
    # From the keyboard: the first utterance's button, then Enter.
    await utterances(page).first.locator("button").focus()
    await page.keyboard.press("Enter")
    await page.wait_for_function("() => window.seeks.length === 2", timeout=WAIT_MS)
    assert await page.evaluate("window.seeks[1]") == pytest.approx(said[0]["start_s"], abs=0.05)
