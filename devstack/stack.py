"""The one supervisor of a whole Callstream stack, for `make run`, the benchmark and the chaos
suite: embedded PostgreSQL and Redis in a data dir, migrations, the API and arq workers, each a
child that dies with us. It watches them (the first part to exit is reported) and stops them all
in reverse order of start, so the front door closes first and the stores last.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from devstack.cluster import EmbeddedRedisCluster
from devstack.commands import (
    API_TARGET,
    WORKER_SETTINGS,
    api_command,
    migrate_command,
    worker_command,
)
from devstack.processes import die_with_parent, free_port, stop_all, stop_process, wait_for_port
from devstack.servers import EmbeddedPostgres, EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class Process:
    """A child of the stack other than a store: the API or a worker."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path | None  # None: it writes to our stdout and stderr
    port: int | None = None  # the API's
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 15

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        stop_process(self.proc, self.stop_signal, self.stop_timeout_s)

    def kill(self) -> None:
        stop_process(self.proc, signal.SIGKILL)


@dataclass(frozen=True)
class Part:
    """Anything the stack started: how to tell it has exited and how to stop it."""

    name: str
    exit_code: Callable[[], int | None]  # None while it runs
    stop: Callable[[], None]


def _server_exit_code(server: EmbeddedPostgres | EmbeddedRedis) -> int | None:
    # Read at call time: a server stopped and started again has a new process.
    return None if server.proc is None else server.proc.poll()


def _cluster_exit_code(cluster: EmbeddedRedisCluster) -> int | None:
    # A cluster outlives a node's death (a replica takes over): it is gone when all nodes are.
    codes = [node.proc.poll() if node.proc is not None else 0 for node in cluster.nodes]
    return None if any(code is None for code in codes) else codes[0]


class Stack:
    """Parts are registered before they start, so one that fails halfway is stopped too.

    `data_dir` None means a temp dir, removed by `close()`. With `log_to_files`, every process
    writes to `<data_dir>/<name>.log`; without, to our own stdout and stderr (`make run`).
    The stores always log to their own files in their data dirs, and so do the migrations.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        env: Mapping[str, str],
        log_to_files: bool = True,
        fast_and_unsafe: bool = False,
        appendfsync: str = "everysec",
        temp_prefix: str = "callstream-",
    ) -> None:
        self._temp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._temp = tempfile.TemporaryDirectory(prefix=temp_prefix)
            data_dir = Path(self._temp.name)
        self.data_dir = data_dir
        self.env = dict(env)
        self._share_metrics()
        self.log_to_files = log_to_files
        self.fast_and_unsafe = fast_and_unsafe
        self.appendfsync = appendfsync
        self.pg: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None  # the first started: REDIS_URL's, or the queue's
        self.cluster: EmbeddedRedisCluster | None = None  # the call keys', when started
        self.parts: list[Part] = []
        self.processes: list[Process] = []
        self.servers: list[EmbeddedPostgres | EmbeddedRedis] = []
        self._workers_started = 0

    def _share_metrics(self) -> None:
        """The API processes and workers of one stack count their metrics into one directory,
        so /metrics adds them all up (prometheus-client's multiprocess mode). Emptied here:
        a previous run's counts must not be added in."""
        if self.env.get(METRICS_DIR):
            return
        shared = self.data_dir / "metrics"
        shutil.rmtree(shared, ignore_errors=True)
        shared.mkdir(parents=True)
        self.env[METRICS_DIR] = str(shared)

    # --- the stores ------------------------------------------------------------------------

    def start_postgres(self, port: int | None = None) -> EmbeddedPostgres:
        """Embedded PostgreSQL in `<data_dir>/postgres`; DATABASE_URL then names it."""
        pg = EmbeddedPostgres(
            self.data_dir / "postgres",
            port=port or free_port(),
            fast_and_unsafe=self.fast_and_unsafe,
        )
        self._add_server("postgres", pg)
        pg.start()
        self.pg = pg
        self.env["DATABASE_URL"] = pg.url
        return pg

    def start_redis(
        self, port: int | None = None, name: str = "redis", appendfsync: str | None = None
    ) -> EmbeddedRedis:
        """Embedded Redis (AOF) in `<data_dir>/<name>`. The first one started is the stack's:
        REDIS_URL then names it. Others (e.g. a second fsync policy) are extras."""
        redis = EmbeddedRedis(
            self.data_dir / name,
            port=port or free_port(),
            appendfsync=appendfsync or self.appendfsync,
        )
        self._add_server(name, redis)
        redis.start()
        if self.redis is None:
            self.redis = redis
            self.env["REDIS_URL"] = redis.url
        return redis

    def start_redis_cluster(
        self, masters: int = 3, replicas_per_master: int = 1, name: str = "redis-cluster"
    ) -> EmbeddedRedisCluster:
        """A Redis Cluster in `<data_dir>/<name>` for the call keys: REDIS_URL then names it,
        and QUEUE_REDIS_URL the single Redis started before (arq needs one), which must exist."""
        if self.redis is None:
            raise RuntimeError("start_redis() first: the job queue needs a single Redis")
        cluster = EmbeddedRedisCluster(
            self.data_dir / name, masters=masters, replicas_per_master=replicas_per_master
        )
        self.parts.append(Part(name, lambda: _cluster_exit_code(cluster), cluster.stop))
        cluster.start()
        self.cluster = cluster
        self.env["QUEUE_REDIS_URL"] = self.redis.url
        self.env["REDIS_URL"] = cluster.url
        return cluster

    def _add_server(self, name: str, server: EmbeddedPostgres | EmbeddedRedis) -> None:
        self.servers.append(server)
        self.parts.append(Part(name, lambda: _server_exit_code(server), server.stop))

    def migrate(self, timeout_s: float = 120) -> None:
        """alembic upgrade head; its output goes to `<data_dir>/migrate.log` and, if it fails,
        into the error."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "migrate.log"
        with log.open("wb") as out:
            done = subprocess.run(
                migrate_command(), env=self.env, cwd=ROOT, stdout=out, stderr=out,
                timeout=timeout_s,
            )  # fmt: skip
        if done.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-20:]
            raise RuntimeError(f"migrations failed ({done.returncode}):\n" + "\n".join(tail))

    # --- the processes ---------------------------------------------------------------------

    def start_api(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        target: str = API_TARGET,
        extra_env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        name: str = "api",
        timeout_s: float = 30,
    ) -> Process:
        """uvicorn serving `target`; returns once it listens (raises if it exits first)."""
        port = port or free_port()
        process = self.spawn(name, [*api_command(port, host, target), *extra_args], extra_env)
        process.port = port
        wait_for_port(port, timeout_s, process.proc)
        return process

    def start_worker(
        self, extra_env: Mapping[str, str] | None = None, settings: str = WORKER_SETTINGS
    ) -> Process:
        """An arq worker, named worker1, worker2, … in order of start. Stopping it gives it
        time to hand its jobs back (SHUTDOWN_GRACE_S)."""
        self._workers_started += 1
        name = f"worker{self._workers_started}"
        return self.spawn(name, worker_command(settings), extra_env, stop_timeout_s=30)

    def spawn(
        self,
        name: str,
        args: Sequence[str],
        extra_env: Mapping[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout_s: float = 15,
    ) -> Process:
        name = self._unique(name)
        env = {**self.env, **(extra_env or {})}
        log = self.data_dir / f"{name}.log" if self.log_to_files else None
        if log is None:
            proc = subprocess.Popen(args, env=env, cwd=ROOT, preexec_fn=die_with_parent)
        else:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("ab") as out:  # the child keeps its own descriptor
                proc = subprocess.Popen(
                    args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                )  # fmt: skip
        process = Process(name, proc, log, stop_signal=stop_signal, stop_timeout_s=stop_timeout_s)
        self.processes.append(process)
        self.parts.append(Part(name, process.poll, process.stop))
        return process

    def _unique(self, name: str) -> str:
        taken = {part.name for part in self.parts}
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    # --- watching and stopping -------------------------------------------------------------

    def exited(self) -> tuple[Part, int] | None:
        """The first part that has exited, with its exit code."""
        for part in self.parts:
            code = part.exit_code()
            if code is not None:
                return part, code
        return None

    def watch(self, interval_s: float = 0.5) -> tuple[Part, int]:
        """Block until a part exits; that part and its exit code."""
        while (gone := self.exited()) is None:
            time.sleep(interval_s)
        return gone

    def log_files(self) -> dict[str, Path]:
        """Every log written so far, by a file name unique in the stack: the processes', the
        migrations', and each store's (named after its data dir: postgres.log, redis.log)."""
        logs = {p.log.name: p.log for p in self.processes if p.log is not None}
        logs["migrate.log"] = self.data_dir / "migrate.log"
        for server in self.servers:
            own = "postgres.log" if isinstance(server, EmbeddedPostgres) else "redis.log"
            logs[f"{server.data_dir.name}.log"] = server.data_dir / own
        for node in self.cluster.nodes if self.cluster is not None else []:
            logs[f"cluster-{node.data_dir.name}.log"] = node.data_dir / "redis.log"
        return {name: path for name, path in logs.items() if path.exists()}

    def stop_all(self) -> None:
        """Stop every part in reverse order of start; errors are printed, the rest still stop."""
        stop_all([part.stop for part in reversed(self.parts)])
        self.parts.clear()

    def close(self, keep_logs: Path | None = None) -> None:
        """stop_all, copy the logs to `keep_logs` if given, and remove a temp data dir."""
        self.stop_all()
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for name, log in self.log_files().items():
                shutil.copy(log, keep_logs / name)
        if self._temp is not None:
            self._temp.cleanup()

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
