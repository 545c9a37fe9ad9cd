"""The benchmarked processes on devstack's Stack: embedded Redis and PostgreSQL (fsync off: the
figures measure Callstream, not the disk), the API, the bare ceiling, a second Redis, workers.

Every process started here is stopped by `Stack.close()`, which run.py calls in a `finally`.
"""

from __future__ import annotations

import os
import subprocess

import devstack.stack
from devstack.servers import EmbeddedRedis


class Stack:
    def __init__(self) -> None:
        self.stack = devstack.stack.Stack(
            env=os.environ, fast_and_unsafe=True, temp_prefix="callstream-bench-"
        )

    def start_stores(self) -> None:
        self.stack.start_postgres()
        self.stack.start_redis()
        self.stack.migrate()

    def start_uvicorn(
        self, target: str, extra_env: dict[str, str] | None = None
    ) -> tuple[int, subprocess.Popen[bytes]]:
        api = self.stack.start_api(
            target=target, extra_env=extra_env, extra_args=("--log-level", "warning")
        )
        assert api.port is not None
        return api.port, api.proc

    def start_redis(self, appendfsync: str) -> EmbeddedRedis:
        """Another Redis beside the main one, e.g. with `appendfsync always`."""
        return self.stack.start_redis(name=f"redis-{appendfsync}", appendfsync=appendfsync)

    def start_worker(self, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
        return self.stack.start_worker(extra_env).proc

    @property
    def pg_dsn(self) -> str:
        assert self.stack.pg is not None
        return self.stack.pg.url.replace("postgresql+asyncpg://", "postgresql://")

    @property
    def redis_url(self) -> str:
        assert self.stack.redis is not None
        return self.stack.redis.url

    def close(self) -> None:
        self.stack.close()
