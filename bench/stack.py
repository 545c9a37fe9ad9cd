"""The benchmarked processes: embedded Redis and PostgreSQL, the API, the bare ceiling, workers.

Every process started here is registered in `Stack.stoppers` and stopped by `Stack.close()`,
which run.py calls in a `finally`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from devstack.commands import api_command, migrate_command, worker_command
from devstack.servers import (
    EmbeddedPostgres,
    EmbeddedRedis,
    die_with_parent,
    free_port,
    stop_all,
    stop_process,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent


class Stack:
    def __init__(self) -> None:
        self.stoppers: list[Callable[[], None]] = []
        self.tmp = tempfile.TemporaryDirectory(prefix="callstream-bench-")
        os.chmod(self.tmp.name, 0o755)
        self.env = dict(os.environ)
        self.redis: EmbeddedRedis | None = None
        self.pg: EmbeddedPostgres | None = None
        self.spawned = 0

    def start_stores(self) -> None:
        self.pg = EmbeddedPostgres(Path(self.tmp.name) / "pg", fast_and_unsafe=True).start()
        self.stoppers.insert(0, self.pg.stop)
        self.redis = EmbeddedRedis(Path(self.tmp.name) / "redis").start()
        self.stoppers.insert(0, self.redis.stop)
        self.env["DATABASE_URL"] = self.pg.url
        self.env["REDIS_URL"] = self.redis.url
        subprocess.run(
            migrate_command(),
            env=self.env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )

    def spawn(
        self, args: list[str], extra_env: dict[str, str] | None = None, sig: int = signal.SIGTERM
    ) -> subprocess.Popen[bytes]:
        env = {**self.env, **(extra_env or {})}
        self.spawned += 1
        log_path = Path(self.tmp.name) / f"process-{self.spawned}.log"
        with open(log_path, "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                args, env=env, cwd=ROOT, preexec_fn=die_with_parent, stdout=log, stderr=log
            )
        self.stoppers.insert(0, lambda: stop_process(proc, sig, timeout_s=20))
        return proc

    def start_uvicorn(
        self, target: str, extra_env: dict[str, str] | None = None
    ) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        proc = self.spawn([*api_command(port, target=target), "--log-level", "warning"], extra_env)
        wait_for_port(port, 30, proc)
        return port, proc

    def start_redis(self, appendfsync: str) -> EmbeddedRedis:
        """Another Redis beside the main one, e.g. with `appendfsync always`."""
        redis = EmbeddedRedis(Path(self.tmp.name) / f"redis-{appendfsync}", appendfsync=appendfsync)
        redis.start()
        self.stoppers.insert(0, redis.stop)
        return redis

    def start_worker(self, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
        return self.spawn(worker_command(), extra_env)

    @property
    def pg_dsn(self) -> str:
        assert self.pg is not None
        return self.pg.url.replace("postgresql+asyncpg://", "postgresql://")

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def close(self) -> None:
        stop_all(self.stoppers)
        self.stoppers.clear()
        self.tmp.cleanup()
