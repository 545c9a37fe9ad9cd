"""The command lines of Callstream's processes, one definition for `make run`, the benchmark and
the chaos suite, so that what is measured and broken is what runs in production (Procfile)."""

from __future__ import annotations

import sys

API_TARGET = "service.app:app"
WORKER_SETTINGS = "jobs.worker.WorkerSettings"
# uvloop and httptools: the fast event loop and HTTP parser; no access log line per packet.
# Bounds against abuse: at most 4,000 connections and tasks (503 beyond), idle keep-alive
# connections closed after 5 s, WebSocket messages of at most 1 MiB (a media frame is far less;
# the app refuses more than a frame can hold before parsing it). WebSockets: uvicorn's
# websockets-sansio protocol that stops reading a socket only once 32 messages wait
# (service/ws_protocol.py), not after each one.
WS_PROTOCOL = "service.ws_protocol:QueuedWebSocketProtocol"
UVICORN_FLAGS = (
    "--loop", "uvloop", "--http", "httptools", "--no-access-log",
    "--limit-concurrency", "4000", "--timeout-keep-alive", "5", "--ws-max-size", "1048576",
    "--ws", WS_PROTOCOL, "--ws-max-queue", "32",
)  # fmt: skip


def migrate_command() -> list[str]:
    return [sys.executable, "-m", "alembic", "upgrade", "head"]


def api_command(port: int, host: str = "127.0.0.1", target: str = API_TARGET) -> list[str]:
    return [sys.executable, "-m", "uvicorn", target, "--host", host, "--port", str(port),
            *UVICORN_FLAGS]  # fmt: skip


def worker_command(settings: str = WORKER_SETTINGS) -> list[str]:
    return [sys.executable, "-m", "arq", settings]
