"""A worker killed outright cannot shut its model pool down: its model processes must leave by
themselves (jobs/ai_local.py's exit_with_parent) instead of waiting for work for ever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

# A stand-in worker: a spawn pool whose processes start as the local model's do (without loading
# the model), one job run to learn its process's pid, then the worker waits to be killed.
WORKER = textwrap.dedent(
    """
    import multiprocessing, os, time
    from concurrent.futures import ProcessPoolExecutor

    from jobs.ai_local import exit_with_parent

    def pid():
        return os.getpid()

    if __name__ == "__main__":
        pool = ProcessPoolExecutor(
            2,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent,
            initargs=(os.getpid(), 0.05),
        )
        pids = {pool.submit(pid).result() for _ in range(8)}
        print(" ".join(map(str, sorted(pids))), flush=True)
        time.sleep(120)
    """
)


def _gone(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
        return bool(status == psutil.STATUS_ZOMBIE)  # exited, not yet reaped
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(60)
def test_model_processes_leave_when_their_worker_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    children: list[int] = []
    try:
        assert worker.stdout is not None
        children = [int(p) for p in worker.stdout.readline().split()]
        assert children
        assert all(not _gone(p) for p in children)
        worker.send_signal(signal.SIGKILL)  # no shutdown: the pool is never told
        worker.wait()
        deadline = time.monotonic() + 30
        while not all(_gone(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in children if not _gone(p)] == []
    finally:
        worker.kill()
        for pid in children:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
