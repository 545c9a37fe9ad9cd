"""The one stack launcher of the benchmarks: devstack's Stack started in `make run`'s sequence
(devstack/run.py: PostgreSQL, Redis, migrations, the workers, then the API), so what is measured
is what `make run` and the Procfile run. A suite changes the layout only through `Layout` (how
many API processes and workers, their environment, the stores' fsync), or starts extra parts
(another API, a second Redis, a cluster) on the same Stack, which stops them all on close.

With `stores` (the test suite's own PostgreSQL and Redis), no store is started: the smoke runs
of tests/bench/ use the servers the tests already have.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from bench.cpu import CpuMeter
from bench.stores import reset_stores
from devstack.commands import API_TARGET
from devstack.servers import EmbeddedPostgres, EmbeddedRedis
from devstack.stack import Process, Stack

QUIET_API = ("--log-level", "warning")
CORES = os.cpu_count() or 1
# The mock AI answering at once and never failing: what a suite sets where the AI is not what it
# measures (the workers' own cost, ingestion under a drain).
INSTANT_AI = {
    "AI_PROVIDER": "mock",
    "AI_FAILURE_RATE": "0",
    "AI_LATENCY_MIN_S": "0",
    "AI_LATENCY_MAX_S": "0",
}


@dataclass(frozen=True)
class Stores:
    """PostgreSQL and Redis already running (SQLAlchemy URL, redis:// URL)."""

    database_url: str
    redis_url: str


@dataclass(frozen=True)
class Layout:
    api_processes: int = CORES  # WEB_CONCURRENCY, as `make run`; 0: no API (a suite starts its own)
    workers: int = CORES  # as `make run`
    env: Mapping[str, str] = field(default_factory=dict)
    # fsync off in PostgreSQL: the figures measure Callstream, not the disk. `make run` keeps it on.
    durable: bool = False
    appendfsync: str = "everysec"


class BenchStack:
    def __init__(self, layout: Layout, stores: Stores | None = None) -> None:
        # Each API's processes are its --workers, never WEB_CONCURRENCY from our environment.
        env = {k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"} | dict(layout.env)
        self.stack = Stack(
            env=env,
            fast_and_unsafe=not layout.durable,
            appendfsync=layout.appendfsync,
            temp_prefix="callstream-bench-",
        )
        self.layout = layout
        self.api: Process | None = None
        try:
            if stores is None:
                self.stack.start_postgres()
                self.stack.start_redis()
            else:
                self.stack.env["DATABASE_URL"] = stores.database_url
                self.stack.env["REDIS_URL"] = stores.redis_url
            self.stack.migrate()
            for _ in range(layout.workers):
                self.start_worker()
            if layout.api_processes:
                self.api = self.start_api(processes=layout.api_processes)
        except BaseException:
            self.close()
            raise

    # --- what the suites read ---------------------------------------------------------------

    @property
    def api_port(self) -> int:
        assert self.api is not None, "the layout has no API"
        assert self.api.port is not None
        return self.api.port

    @property
    def redis_url(self) -> str:
        return self.stack.env["REDIS_URL"]

    @property
    def queue_url(self) -> str:
        return self.stack.env.get("QUEUE_REDIS_URL", self.redis_url)

    @property
    def pg_dsn(self) -> str:
        """DATABASE_URL as asyncpg takes it."""
        return self.stack.env["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")

    def redis_urls(self) -> list[str]:
        """Every Redis of the stack: the call keys', the queue's, any extra one."""
        urls = {self.redis_url, self.queue_url}
        urls |= {s.url for s in self.stack.servers if isinstance(s, EmbeddedRedis)}
        return sorted(urls)

    def pids(self) -> dict[str, list[int]]:
        """The root pids of each group of processes: api (every API process, extra ones and the
        bare ceiling included), workers, redis (cluster nodes included), postgres."""
        groups: dict[str, list[int]] = {"api": [], "workers": [], "redis": [], "postgres": []}
        for p in self.stack.processes:
            if p.poll() is None:
                groups["workers" if p.name.startswith("worker") else "api"].append(p.pid)
        for server in self.stack.servers:
            if server.proc is not None:
                kind = "postgres" if isinstance(server, EmbeddedPostgres) else "redis"
                groups[kind].append(server.proc.pid)
        for node in self.stack.cluster.nodes if self.stack.cluster is not None else []:
            if node.proc is not None:
                groups["redis"].append(node.proc.pid)
        return groups

    def meter(self) -> CpuMeter:
        return CpuMeter(self.pids)

    async def reset(self) -> None:
        await reset_stores(self.pg_dsn, self.redis_urls())

    # --- starting more ---------------------------------------------------------------------

    def start_api(
        self,
        target: str = API_TARGET,
        env: Mapping[str, str] | None = None,
        name: str = "api",
        processes: int = 1,
    ) -> Process:
        """Another API (or the bare ceiling, `bench.bare_app:app`) on a free port."""
        extra = (*QUIET_API, "--workers", str(processes))
        return self.stack.start_api(target=target, extra_env=env, extra_args=extra, name=name)

    def start_extra_redis(self, name: str, appendfsync: str = "everysec") -> EmbeddedRedis:
        """Another Redis beside the stack's, e.g. with `appendfsync always`: it never becomes
        the stack's REDIS_URL (devstack makes the first one started that, and with the test
        suite's stores this would be the first)."""
        kept = self.stack.env["REDIS_URL"], self.stack.redis
        redis = self.stack.start_redis(name=name, appendfsync=appendfsync)
        self.stack.env["REDIS_URL"], self.stack.redis = kept
        return redis

    def start_worker(self, env: Mapping[str, str] | None = None) -> Process:
        return self.stack.start_worker(env)

    # --- stopping ----------------------------------------------------------------------------

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> BenchStack:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
