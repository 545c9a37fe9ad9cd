"""Real processes for the chaos suite: PostgreSQL, Redis (AOF), the API and arq workers, each in
a temp dir of its own, with what it takes to break them (kill, restart, stop) and to watch them.

Every process is a child of the test process (dies with it) and `Stack.close()` stops them all.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from devstack.commands import api_command, migrate_command, worker_command
from devstack.servers import (
    EmbeddedPostgres,
    EmbeddedRedis,
    die_with_parent,
    free_port,
    stop_process,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class StackConfig:
    ai_failure_rate: float = 0.3
    ai_latency_min_s: float = 0.05
    ai_latency_max_s: float = 0.3
    lease_ttl_s: float = 10.0
    call_idle_timeout_s: float = 4.0
    key_retention_s: int = 600
    workers: int = 2
    # CHAOS_WORKER_SETTINGS runs the suite against another arq settings class (e.g. a fix).
    worker_settings: str = field(
        default_factory=lambda: os.environ.get(
            "CHAOS_WORKER_SETTINGS", "jobs.worker.WorkerSettings"
        )
    )
    extra_env: dict[str, str] = field(default_factory=dict)

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
    """One Callstream deployment made of real processes. Use `running_stack()`."""

    root: Path
    config: StackConfig
    pg: EmbeddedPostgres
    redis: EmbeddedRedis
    api_port: int = field(default_factory=free_port)
    api: subprocess.Popen[bytes] | None = None
    workers: dict[str, Worker] = field(default_factory=dict)
    retired: list[Worker] = field(default_factory=list)
    crashed: list[tuple[str, int | None]] = field(default_factory=list)  # (name, exit code)
    _serial: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def database_url(self) -> str:
        return self.pg.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AI_", "LEASE_"))}
        env.update(
            DATABASE_URL=self.pg.url,
            REDIS_URL=self.redis.url,
            PYTHONUNBUFFERED="1",
            CALL_IDLE_TIMEOUT_S=str(self.config.call_idle_timeout_s),
            KEY_RETENTION_S=str(self.config.key_retention_s),
        )
        return env

    def _spawn(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                args,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )

    # --- start -----------------------------------------------------------------------------

    def migrate(self) -> None:
        subprocess.run(
            migrate_command(),
            env=self.base_env(),
            cwd=ROOT,
            check=True,
            capture_output=True,
        )

    def start_api(self, timeout_s: float = 30) -> None:
        args = api_command(self.api_port)
        self.api = self._spawn(args, self.base_env(), self.root / "api.log")
        wait_for_port(self.api_port, timeout_s, self.api)

    def start_worker(self, **env: str) -> Worker:
        self._serial += 1
        name = f"worker{self._serial}"
        log = self.root / f"{name}.log"
        full_env = {**self.base_env(), **self.config.worker_env(), **env}
        proc = self._spawn(worker_command(self.config.worker_settings), full_env, log)
        worker = Worker(name, proc, log)
        self.workers[name] = worker
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
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)
        self.retired.append(self.workers.pop(worker.name))

    def restart_redis(self, down_s: float = 0.0) -> None:
        """Stop Redis (SIGTERM: AOF is flushed) and start it again on the same port and data."""
        self.redis.stop()
        if down_s:
            time.sleep(down_s)
        self.redis = EmbeddedRedis(self.redis.data_dir, port=self.redis.port).start()

    def stop_redis(self) -> None:
        self.redis.stop()

    def start_redis(self) -> None:
        self.redis = EmbeddedRedis(self.redis.data_dir, port=self.redis.port).start()

    def stop_postgres(self) -> None:
        self.pg.stop()

    def start_postgres(self) -> None:
        self.pg = EmbeddedPostgres(self.pg.data_dir, port=self.pg.port, fast_and_unsafe=True)
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

    def close(self) -> None:
        stoppers: list[Callable[[], None]] = []
        if self.api is not None:
            api = self.api
            stoppers.append(lambda: stop_process(api, signal.SIGTERM, timeout_s=10))
        for worker in list(self.workers.values()):
            stoppers.append(partial(stop_process, worker.proc, signal.SIGTERM, timeout_s=10))
        stoppers += [self.redis.stop, self.pg.stop]
        for stop in stoppers:
            try:
                stop()
            except Exception as exc:  # stop the rest whatever happens
                print(f"chaos harness: error while stopping: {exc!r}")  # noqa: T201


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
    """PostgreSQL, Redis, migrations, the API and `workers` workers; everything stopped after.
    With `keep_logs`, the processes' logs are copied there before the temp dir goes."""
    with tempfile.TemporaryDirectory(prefix="callstream-chaos-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # PostgreSQL runs as another user when we are root
        pg = EmbeddedPostgres(root / "pg", fast_and_unsafe=True)
        redis = EmbeddedRedis(root / "redis")
        stack = Stack(root=root, config=config, pg=pg, redis=redis)
        try:
            pg.start()
            redis.start()
            stack.migrate()
            stack.start_api()
            started = [
                stack.start_worker() for _ in range(config.workers if workers is None else workers)
            ]
            for worker in started:
                stack.wait_worker_ready(worker)
            yield stack
        finally:
            stack.close()
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                for log in [*root.glob("*.log"), root / "redis" / "redis.log"]:
                    if log.exists():
                        shutil.copy(log, keep_logs / log.name)


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
        async for key in client.scan_iter(match="{call:*}:lease", count=1000):
            value = await client.get(key)
            if value is not None:
                call_id = key.decode().removeprefix("{call:").removesuffix("}:lease")
                holders[call_id] = value.decode()
        return holders
    finally:
        await client.aclose()


def holder_pid(holder: str) -> int:
    return int(holder.split(":")[1])
