"""schemathesis over the OpenAPI document, against a real API process (with keys), Redis and
PostgreSQL: generated requests (bounded) never get a 5xx, and every answer matches what the
document says of its status, content type and body. The API has stores of its own (a database
made for it, a Redis database of its own), seeded with calls of every shape it serves, so what it
finds does not depend on what earlier tests left."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.commands import api_command
from devstack.processes import free_port, stop_process, wait_for_port
from tests.conftest import migrate

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "fuzz-admin-key"
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]


FUZZ_DB = "callstream_fuzz"
FUZZ_REDIS_DB = 9
SILENCE = base64.b64encode(b"\xff" * 160).decode()  # 20 ms of μ-law


def own_stores(server_urls: tuple[str, str]) -> tuple[str, str]:
    """A database and a Redis database for this module alone, empty, migrated."""
    db_url, redis_url = server_urls
    server = make_url(db_url)

    async def recreate() -> None:
        engine = create_async_engine(server, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(f"DROP DATABASE IF EXISTS {FUZZ_DB} WITH (FORCE)"))
                await conn.execute(text(f"CREATE DATABASE {FUZZ_DB}"))
        finally:
            await engine.dispose()
        redis = Redis.from_url(redis_url, db=FUZZ_REDIS_DB)
        try:
            await redis.flushdb()
        finally:
            await redis.aclose()

    asyncio.run(recreate())
    own_db = server.set(database=FUZZ_DB).render_as_string(hide_password=False)
    migrate(own_db)
    return own_db, f"{redis_url.rsplit('/', 1)[0]}/{FUZZ_REDIS_DB}"


def seed(api: str) -> None:
    """Calls of each shape the API serves: live with audio on two tracks, live with text,
    completed (queued for a worker that is not there)."""
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=api, headers=headers) as http:
        for call_id, data in (("fuzz-audio", SILENCE), ("fuzz-text", "hello there")):
            packets = [{"sequence": n, "data": data, "timestamp": n * 0.02,
                        "track": ("inbound", "outbound")[n % 2]} for n in range(20)]  # fmt: skip
            http.post(f"/v1/call/stream/{call_id}/batch", json={"packets": packets})
        http.post("/v1/call/stream/fuzz-done", json={"sequence": 0, "data": "bye"})
        http.post("/v1/call/complete/fuzz-done")


@pytest.fixture(scope="module")
def api_url(server_urls: tuple[str, str]) -> Iterator[str]:
    db_url, redis_url = own_stores(server_urls)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url}
    # No read rate limit: it would answer most generated reads 429 and leave them untested.
    env |= {"ADMIN_API_KEYS": ADMIN_KEY, "LOG_LEVEL": "WARNING", "READ_RATE_LIMIT": "0"}
    proc = subprocess.Popen(
        [*api_command(port), "--log-level", "warning"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, 30, proc)
        seed(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, signal.SIGTERM)


@pytest.fixture(autouse=True)
def clean_stores() -> None:
    """Generated calls pile up in the module's own stores (own_stores); nothing else reads
    them, and the suite's shared stores are left alone."""


def test_generated_requests_get_no_5xx_and_answers_match_the_document(
    api_url: str, tmp_path: Path
) -> None:
    # schemathesis's own runner (its pytest plugin does not support this pytest yet), bounded:
    # at most 15 examples per operation, in every mode (valid and invalid data), one seed.
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"), "run", f"{api_url}/openapi.json",
            "--checks", ",".join(CHECKS), "--max-examples", "15", "--seed", "7",
            "--header", f"Authorization: Bearer {ADMIN_KEY}", "--request-timeout", "35",
            "--generation-database", "none", "--report-dir", str(tmp_path), "--no-color",
            # A stream that never ends would hold every example until the request timeout;
            # tests/service/test_events.py covers it, its bad inputs included.
            "--exclude-path", "/v1/events",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
