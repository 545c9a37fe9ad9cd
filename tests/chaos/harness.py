"""Real processes for the chaos suite: PostgreSQL, Redis (AOF), the API and arq workers in a temp
dir, with what it takes to break them (kill, restart, stop) and to watch them.

devstack's Stack starts them, as it does for `make run`: every process is a child of the test
process (dies with it), and `running_stack()` stops them all.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

import devstack.stack
from devstack.cluster import EmbeddedRedisCluster
from devstack.processes import stop_process
from devstack.servers import EmbeddedPostgres, EmbeddedRedis


@dataclass
class StackConfig:
    ai_failure_rate: float = 0.3
    ai_latency_min_s: float = 0.05
    ai_latency_max_s: float = 0.3
    lease_ttl_s: float = 10.0
    call_idle_timeout_s: float = 4.0
    key_retention_s: int = 600
    workers: int = 2
    api_processes: int = 2  # as make run starts them on this 2-core machine
    # CHAOS_WORKER_SETTINGS runs the suite against another arq settings class (e.g. a fix).
    worker_settings: str = field(
        default_factory=lambda: os.environ.get(
            "CHAOS_WORKER_SETTINGS", "jobs.worker.WorkerSettings"
        )
    )
    extra_env: dict[str, str] = field(default_factory=dict)  # the workers'
    shared_env: dict[str, str] = field(default_factory=dict)  # every process's, the API's too
    # The call keys on a 3-master cluster (a replica each), the queue on the single Redis.
    redis_cluster: bool = False

    def base_env(self) -> dict[str, str]:
        """Ours, less any AI_ / LEASE_ setting of the shell, plus what the API needs too."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AI_", "LEASE_"))}
        env.update(
            PYTHONUNBUFFERED="1",
            CALL_IDLE_TIMEOUT_S=str(self.call_idle_timeout_s),
            KEY_RETENTION_S=str(self.key_retention_s),
        )
        env.update(self.shared_env)
        return env

    def worker_env(self) -> dict[str, str]:
        return {
            "AI_FAILURE_RATE": str(self.ai_failure_rate),
            "AI_LATENCY_MIN_S": str(self.ai_latency_min_s),
            "AI_LATENCY_MAX_S": str(self.ai_latency_max_s),
            "LEASE_TTL_S": str(self.lease_ttl_s),
            "CALL_IDLE_TIMEOUT_S": str(self.call_idle_timeout_s),
            "KEY_RETENTION_S": str(self.key_retention_s),
            # Retries of the AI come fast, and an outage is retried within a few seconds.
            "AI_BACKOFF_BASE_S": "0.05",
            "AI_BACKOFF_MAX_S": "0.5",
            "DB_RETRY_MAX_S": "3",
            "SHUTDOWN_GRACE_S": "5",
            **self.extra_env,
        }


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Stack:
    """One Callstream deployment made of real processes, run by devstack's Stack, with what it
    takes to break them (kill, restart, stop) and to watch them. Use `running_stack()`."""

    supervisor: devstack.stack.Stack
    config: StackConfig
    api_port: int = 0
    workers: dict[str, Worker] = field(default_factory=dict)
    retired: list[Worker] = field(default_factory=list)
    crashed: list[tuple[str, int | None]] = field(default_factory=list)  # (name, exit code)

    @property
    def pg(self) -> EmbeddedPostgres:
        assert self.supervisor.pg is not None
        return self.supervisor.pg

    @property
    def redis(self) -> EmbeddedRedis:
        assert self.supervisor.redis is not None
        return self.supervisor.redis

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def database_url(self) -> str:
        return self.pg.url

    @property
    def redis_url(self) -> str:
        """The single Redis: the call keys' and the queue's, or the queue's beside a cluster."""
        return self.redis.url

    @property
    def cluster(self) -> EmbeddedRedisCluster:
        assert self.supervisor.cluster is not None
        return self.supervisor.cluster

    @property
    def call_keys_url(self) -> str:
        """REDIS_URL: the single Redis, or the cluster."""
        return self.supervisor.env["REDIS_URL"]

    # --- start -----------------------------------------------------------------------------

    def start_api(self) -> None:
        api = self.supervisor.start_api(extra_args=("--workers", str(self.config.api_processes)))
        assert api.port is not None
        self.api_port = api.port

    def start_worker(self, **env: str) -> Worker:
        started = self.supervisor.start_worker(
            {**self.config.worker_env(), **env}, settings=self.config.worker_settings
        )
        assert started.log is not None  # the chaos stack logs to files
        worker = Worker(started.name, started.proc, started.log)
        self.workers[worker.name] = worker
        return worker

    def wait_worker_ready(self, worker: Worker, timeout_s: float = 30) -> None:
        """arq logs its startup once it has connected to Redis and run on_startup."""
        wait_until(
            lambda: "Starting worker" in worker.log.read_text(errors="replace"),
            timeout_s,
            f"{worker.name} never started",
            check=lambda: _alive(worker.proc, worker.name),
        )

    # --- break -----------------------------------------------------------------------------

    def kill_worker(self, worker: Worker) -> None:
        stop_process(worker.proc, signal.SIGKILL)
        self.retired.append(self.workers.pop(worker.name))

    def restart_redis(self, down_s: float = 0.0) -> None:
        """Stop Redis (SIGTERM: AOF is flushed) and start it again on the same port and data."""
        self.redis.stop()
        if down_s:
            time.sleep(down_s)
        self.redis.start()

    def stop_redis(self) -> None:
        self.redis.stop()

    def start_redis(self) -> None:
        self.redis.start()

    def stop_postgres(self) -> None:
        self.pg.stop()

    def start_postgres(self) -> None:
        self.pg.start()

    def replace_crashed_workers(self) -> list[Worker]:
        """A process supervisor's restart policy: every worker that exited by itself (not killed
        by the test) is recorded in `crashed` and replaced by a new one."""
        replacements = []
        for worker in list(self.workers.values()):
            code = worker.proc.poll()
            if code is not None:
                self.retired.append(self.workers.pop(worker.name))
                self.crashed.append((worker.name, code))
                replacements.append(self.start_worker())
        return replacements

    # --- watch -----------------------------------------------------------------------------

    def worker_logs(self) -> str:
        everything = [*self.retired, *self.workers.values()]
        return "\n".join(w.log.read_text(errors="replace") for w in everything if w.log.exists())


def _alive(proc: subprocess.Popen[bytes], name: str) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{name} exited with {proc.returncode}")


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    message: str,
    interval_s: float = 0.1,
    check: Callable[[], Any] | None = None,
) -> float:
    """Poll `condition` until true; returns the seconds waited, raises TimeoutError otherwise."""
    start = time.monotonic()
    while not condition():
        if check is not None:
            check()
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{message} (after {timeout_s}s)")
        time.sleep(interval_s)
    return time.monotonic() - start


@contextmanager
def running_stack(
    config: StackConfig, workers: int | None = None, keep_logs: Path | None = None
) -> Iterator[Stack]:
    """PostgreSQL, Redis, migrations, `workers` workers and the API in a temp dir; everything
    stopped after. With `keep_logs`, the processes' logs are copied there before the temp dir
    goes."""
    supervisor = devstack.stack.Stack(
        env=config.base_env(), fast_and_unsafe=True, temp_prefix="callstream-chaos-"
    )
    stack = Stack(supervisor, config)
    try:
        supervisor.start_postgres()
        supervisor.start_redis()
        if config.redis_cluster:
            supervisor.start_redis_cluster()
        supervisor.migrate()
        started = [
            stack.start_worker() for _ in range(config.workers if workers is None else workers)
        ]
        stack.start_api()
        for worker in started:
            stack.wait_worker_ready(worker)
        yield stack
    finally:
        supervisor.close(keep_logs)


async def poll_until(
    condition: Callable[[], Awaitable[bool]],
    timeout_s: float,
    message: str,
    interval_s: float = 0.1,
) -> float:
    """Async `wait_until`: poll an async condition; the seconds waited, or TimeoutError."""
    start = time.monotonic()
    while not await condition():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{message} (after {timeout_s}s)")
        await asyncio.sleep(interval_s)
    return time.monotonic() - start


# --- observing the stores --------------------------------------------------------------------


def pg_engine(stack: Stack) -> AsyncEngine:
    """No pool: every query opens a fresh connection, so a PostgreSQL restart costs nothing."""
    return create_async_engine(stack.database_url, poolclass=NullPool)


async def lease_holders(stack: Stack) -> dict[str, str]:
    """call id -> holder of its Redis lease ("host:pid:nonce"), for every live lease."""
    client = Redis.from_url(stack.redis_url)
    try:
        holders: dict[str, str] = {}
        async for key in client.scan_iter(match="{s*}:call:*:lease", count=1000):
            value = await client.get(key)
            if value is not None:
                call_id = key.decode().split(":call:", 1)[1].removesuffix(":lease")
                holders[call_id] = value.decode()
        return holders
    finally:
        await client.aclose()


def holder_pid(holder: str) -> int:
    return int(holder.split(":")[1])
