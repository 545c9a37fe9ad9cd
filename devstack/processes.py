"""Small tools for child processes: a free port, waiting for one to listen, dying with the parent,
stopping one and stopping many."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence

_PR_SET_PDEATHSIG = 1


# Ports for servers we start are taken below the kernel's ephemeral range (32768-60999 on
# Linux): a port it hands out for bind(0) is as likely to be taken a moment later by one of the
# many outgoing connections (to Redis, PostgreSQL) as by our server. Each pytest-xdist process
# draws from a range of its own, so two test processes never pick the same port either.
_PORT_RANGE = 2500
_FIRST_PORT = 10000
# free_port releases the port it found at once, so without this two calls in a row could return
# the same one (1 in 2,500: a test's "dead" Redis then answered on its AudioSocket's port).
_RECENTLY_GIVEN: deque[int] = deque(maxlen=256)


def free_port() -> int:
    """A port nothing listens on now, and not one of the last 256 this process handed out."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    low = _FIRST_PORT + _PORT_RANGE * (int(worker) % 8 if worker.isdigit() else 0)
    for _ in range(200):
        port = random.randrange(low, low + _PORT_RANGE)
        if port in _RECENTLY_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _RECENTLY_GIVEN.append(port)
            return port
    with socket.socket() as s:  # a crowded range: whatever the kernel gives
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    _RECENTLY_GIVEN.append(port)
    return port


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies, so even a
    killed supervisor leaves nothing behind. The setting survives exec (also through `unshare`,
    which neither is set-user-ID nor changes our uid as the kernel sees it)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout_s: float = 15) -> None:
    """Ask with `sig`; SIGKILL if it has not exited after `timeout_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_all(stoppers: Sequence[Callable[[], None]]) -> None:
    for stop in stoppers:
        try:
            stop()
        except Exception as exc:  # keep stopping the rest; report, never hide
            print(f"devstack: error while stopping: {exc!r}")
