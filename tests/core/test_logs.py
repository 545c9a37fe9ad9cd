"""core/logs.py: LOG_FORMAT=json gives one JSON object per line, with call_id where the record has
one. In a child process: configuring logging here would reformat pytest's own handlers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOGGING = """
import logging
from core.audit import audit
from core.logs import about, configure_logging
access = logging.getLogger("uvicorn.access")
access.addHandler(logging.StreamHandler())  # as uvicorn's own log config does, before ours
access.propagate = False
configure_logging("INFO", {log_format!r})
logging.getLogger("jobs.worker").info("call %s: %s", "c-9", "ARCHIVED", extra=about("c-9"))
audit("complete", "c-10", "key12345")
logging.getLogger("jobs.sweep").warning("idle sweep completed %d calls", 3)
logging.getLogger("uvicorn.access").warning("a line from a library")
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("service.fastpath").exception("unhandled", extra=about("c-11"))
"""


def log_lines(log_format: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", LOGGING.format(log_format=log_format)],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stderr.splitlines()


def test_json_lines_parse_and_carry_the_call_id() -> None:
    lines = [json.loads(line) for line in log_lines("json")]  # every line, libraries' included
    assert [line.get("call_id") for line in lines] == ["c-9", "c-10", None, None, "c-11"]
    first = lines[0]
    assert first["level"] == "INFO"
    assert first["logger"] == "jobs.worker"
    assert first["message"] == "call c-9: ARCHIVED"
    assert first["time"].endswith("+00:00")
    assert lines[3]["message"] == "a line from a library"
    assert "ValueError: boom" in lines[4]["exception"]


def test_text_stays_the_default_console() -> None:
    lines = log_lines("text")
    assert "INFO jobs.worker call c-9: ARCHIVED" in lines[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])
