"""`make run`'s supervisor: it serves, and Ctrl-C or a part that fails leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from devstack.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_stores() -> None:
    """These tests start their own stack."""


def start_stack(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"CALLSTREAM_DATA_DIR": str(tmp_path / "data"), "PORT": str(port)}
    # Not make run's AudioSocket ports: another stack on this machine may hold them.
    for name in ("AUDIOSOCKET_ADDR", "AUDIOSOCKET_OUTBOUND_ADDR"):
        env[name] = f"127.0.0.1:{free_port()}"
    return subprocess.Popen(
        [sys.executable, "-m", "devstack.run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def descendants(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        children: list[psutil.Process] = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return children


def wait_gone(processes: list[psutil.Process], timeout_s: float = 30) -> list[psutil.Process]:
    alive: list[psutil.Process] = psutil.wait_procs(processes, timeout=timeout_s)[1]
    return alive


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.timeout(120)
def test_make_run_serves_a_packet_and_ctrl_c_leaves_nothing_behind(tmp_path: Path):
    port = free_port()
    stack = start_stack(tmp_path, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert stack.poll() is None, "the stack exited while starting"
            assert time.monotonic() < deadline, "the stack never became ready"
            time.sleep(0.2)
        packet = {"sequence": 0, "data": "hello", "timestamp": 1.0}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/call/stream/run-1", json=packet)
        assert answer.status_code == 202
        children = descendants(stack)
        assert len(children) >= 4  # PostgreSQL, Redis, the API, the worker

        stack.send_signal(signal.SIGINT)

        assert stack.wait(60) == 0
        assert wait_gone(children) == []
    finally:
        for child in descendants(stack):
            child.kill()
        stack.kill()


@pytest.mark.timeout(120)
def test_make_run_stops_everything_when_a_part_fails_to_start(tmp_path: Path, occupied_port: int):
    stack = start_stack(tmp_path, occupied_port)  # the API cannot bind its port
    try:
        seen: list[psutil.Process] = []
        deadline = time.monotonic() + 60
        while stack.poll() is None and time.monotonic() < deadline:
            seen += [p for p in descendants(stack) if p not in seen]
            time.sleep(0.1)

        assert stack.returncode == 1
        assert wait_gone(seen) == []
    finally:
        for child in descendants(stack):
            child.kill()
        stack.kill()


def test_make_run_refuses_to_serve_other_machines_without_api_keys(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEYS")}
    env |= {"CALLSTREAM_DATA_DIR": str(tmp_path / "data"), "HOST": "0.0.0.0"}
    done = subprocess.run(
        [sys.executable, "-m", "devstack.run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert "INGEST_API_KEYS" in done.stdout
    assert not (tmp_path / "data").exists()  # refused before anything started
