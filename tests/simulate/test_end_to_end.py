"""`callstream simulate` against a real API (uvicorn on a socket) and a real arq worker, with the
mock AI, over real PostgreSQL and Redis: what an operator would run, in miniature."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from devstack.servers import free_port
from service.app import create_asgi
from settings import Settings
from simulate import cli
from tests.serving import serving, worker_running

FAST = ["--pace", "fast", "--timeout-s", "60", "--seed", "11"]


@contextlib.asynccontextmanager
async def callstream(settings: Settings) -> AsyncIterator[str]:
    """The API on a real loopback socket and a worker polling the queue; yields the API's URL.
    The AI is the settings': the mock, never failing here."""
    async with worker_running(settings), serving(create_asgi(settings)) as address:
        yield f"http://{address}"


async def simulate(*args: str) -> int:
    # The CLI runs its own event loop (asyncio.run): in a thread, while this loop serves it.
    return await asyncio.to_thread(cli.main, ["simulate", *args])


async def test_calls_over_http_and_the_websocket_end_archived_and_the_summary_says_so(
    settings: Settings, capsys: pytest.CaptureFixture[str]
):
    async with callstream(settings) as url:
        code = await simulate(
            "--url", url, "--calls", "2", "--transport", "mixed", *FAST,
            "--loss", "0.05", "--reorder", "0.05", "--duplicate", "0.05",
        )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 calls: 2 ARCHIVED" in out
    assert "last packet → ARCHIVED: median" in out
    # What the network did to each call is exactly what the server counted.
    assert "server counted exactly the losses, reorders and duplicates sent: 2 of 2 calls" in out
    assert " http " in out
    assert " ws " in out


async def test_batches_over_http_end_archived(
    settings: Settings, capsys: pytest.CaptureFixture[str]
):
    async with callstream(settings) as url:
        code = await simulate(
            "--url", url, "--calls", "2", "--transport", "http", "--batch", "25", *FAST
        )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 calls: 2 ARCHIVED" in out


async def test_a_refused_key_is_said_plainly_and_stops_the_run(
    settings: Settings, capsys: pytest.CaptureFixture[str]
):
    keyed = settings.model_copy(
        update={
            "ingest_api_keys": SecretStr("ingest-1"),
            "supervisor_api_keys": SecretStr("reader-1"),
            "admin_api_keys": SecretStr("admin-1"),
        }
    )
    reads_only = ["--api-key", "reader-1", "--calls", "2", *FAST]
    async with callstream(keyed) as url:
        codes = [
            await simulate("--url", url, "--calls", "1", "--api-key", "nope", *FAST),
            await simulate("--url", url, "--calls", "1", "--api-key", "ingest-1", *FAST),
            # Reading is allowed, sending is not: each transport stops at its first refusal.
            await simulate("--url", url, "--transport", "http", *reads_only),
            await simulate("--url", url, "--transport", "ws", *reads_only),
        ]
    err = capsys.readouterr().err
    assert codes == [1, 1, 1, 1]  # and main returned: nothing escaped as a traceback
    assert "reading calls (GET /v1/calls) was refused: 401 unauthenticated" in err
    assert "reading calls (GET /v1/calls) was refused: 403 forbidden" in err
    assert "POST /v1/call/stream/sim-" in err
    assert "the media WebSocket was refused (HTTP 403)" in err
    assert err.count("CALLSTREAM_READ_KEY") == 4  # every refusal says which keys to pass


async def test_calls_the_server_refuses_are_reported_and_the_run_fails(
    settings: Settings, capsys: pytest.CaptureFixture[str]
):
    tiny = settings.model_copy(update={"max_packet_data_bytes": 100})  # a frame is 216 in base64
    async with callstream(tiny) as url:
        code = await simulate("--url", url, "--calls", "2", "--transport", "mixed", *FAST)
    out = capsys.readouterr().out
    assert code == 1
    assert "2 calls: 2 not final" in out
    assert "packet refused: 413 payload_too_large" in out
    assert "WebSocket closed with an error: payload_too_large" in out


async def test_a_server_that_is_down_is_said_plainly(capsys: pytest.CaptureFixture[str]):
    code = await simulate("--url", f"http://127.0.0.1:{free_port()}", "--calls", "1", *FAST)
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot reach Callstream at http://127.0.0.1:" in err
