"""The API's pipelined Redis round trips (db/pipelining.py), recorded by a test."""

from __future__ import annotations

from typing import Any

import pytest

from core import backlog
from db import pipelining


def script_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch of script calls sent from now on (one round trip each). The
    backlog is kept fresh meanwhile: the store that finds its once-a-second read stale waits for
    that read and goes a round trip after the others (core/backlog.py)."""
    monkeypatch.setattr(backlog, "REFRESH_S", 600.0)
    batches: list[int] = []
    run_scripts = pipelining.run_scripts

    async def recording(redis: Any, calls: Any, replication: Any = None) -> list[Any]:
        batches.append(len(calls))
        return await run_scripts(redis, calls, replication)

    monkeypatch.setattr(pipelining, "run_scripts", recording)
    return batches
