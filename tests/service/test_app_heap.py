"""An API process settles its heap once started (SETTLE_HEAP, core/heap.py): in a process of its
own, as the suite's own process serves many apps with its collector left as it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from core.heap import YOUNG_OBJECTS

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import asyncio, gc, sys
from service.app import create_app
from tests.conftest import make_settings

async def main(settle: bool) -> None:
    app = create_app(make_settings(sys.argv[1], sys.argv[2], settle_heap=settle))
    async with app.router.lifespan_context(app):
        print(gc.get_freeze_count() > 0, gc.get_threshold()[0])

asyncio.run(main(sys.argv[3] == "on"))
"""


def probe(server_urls: tuple[str, str], settle: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *server_urls, settle],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.split()


def test_an_api_process_freezes_its_start_up_and_walks_young_objects_less_often(
    server_urls: tuple[str, str],
):
    assert probe(server_urls, "on") == ["True", str(YOUNG_OBJECTS)]
    assert probe(server_urls, "off") == ["False", "700"]
