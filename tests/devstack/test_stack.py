"""The one supervisor: it reports the first part to exit and stops the rest in reverse order."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

from devstack.stack import Part, Stack

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_parts_stop_in_reverse_order_of_start_and_errors_do_not_stop_the_rest(
    capsys: pytest.CaptureFixture[str],
):
    stopped: list[str] = []

    def failing() -> None:
        stopped.append("b")
        raise RuntimeError("b would not stop")

    with Stack(env={}) as stack:
        stack.parts += [
            Part("a", lambda: None, lambda: stopped.append("a")),
            Part("b", lambda: None, failing),
            Part("c", lambda: None, lambda: stopped.append("c")),
        ]
        stack.stop_all()
    assert stopped == ["c", "b", "a"]
    assert "b would not stop" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_a_dead_part_is_reported_and_stop_all_leaves_nothing_behind(tmp_path: Path):
    stack = Stack(tmp_path / "data", env=dict(os.environ))
    try:
        redis = stack.start_redis()
        first = stack.spawn("sleeper", SLEEPER)
        second = stack.spawn("sleeper", SLEEPER)
        assert second.name == "sleeper-2"
        assert stack.exited() is None
        second.kill()
        part, code = stack.watch(interval_s=0.05)
        assert (part.name, code) == ("sleeper-2", -9)
    finally:
        stack.close()
    assert redis.proc is not None
    assert not any(psutil.pid_exists(p.pid) for p in (first.proc, redis.proc))
    assert (tmp_path / "data" / "sleeper.log").exists()  # a data dir of our own is kept
