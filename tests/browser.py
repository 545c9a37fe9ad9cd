"""A real headless browser for the dashboard's tests: the distribution's Chromium
(/usr/bin/chromium, which `make test` installs through scripts/system-packages.sh) driven by
Playwright's async API. Async, because the API server under test runs in the test's own event
loop (tests/serving.py): a blocking driver would stop the server it is waiting for.

Playwright never downloads a browser here; without Chromium the tests that need it are skipped,
saying exactly what is missing and how to install it (in CI they fail: tests/needs.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, async_playwright

from tests.needs import missing

CHROMIUM = Path("/usr/bin/chromium")
# Tests run as root in CI (no sandbox then), on 2 cores without a GPU or a display, and must
# not reach out to the network for updates, sync or field trials.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "install the distribution's Chromium: `make system-packages` as root "
    "(Debian/Ubuntu: sudo apt-get install chromium)"
)


def chromium_or_skip() -> Path:
    """The browser's path, or a skip that says what is missing and how to get it."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        where = (
            f" (a chromium is on PATH at {found}, but the tests use {CHROMIUM})" if found else ""
        )
        missing(f"{CHROMIUM} is missing{where}: {INSTALL_HINT}")
    return CHROMIUM


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """The distribution's Chromium, headless, for as long as the block runs."""
    executable = chromium_or_skip()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()
