"""`make run`'s layout for the real-calls benchmark, on devstack's Stack: embedded PostgreSQL and
Redis as `make run` starts them (durable: fsync on, Redis AOF everysec), migrations, as many arq
workers and API processes as the machine has cores, the mock AI made instant. Also what the
benchmark reads of it: the stores' bytes, and every process's CPU time and memory."""

from __future__ import annotations

import os
from dataclasses import dataclass

import asyncpg
import psutil
from redis.asyncio import Redis

from devstack.stack import Process, Stack

INSTANT_AI = {
    "AI_PROVIDER": "mock",
    "AI_FAILURE_RATE": "0",
    "AI_LATENCY_MIN_S": "0",
    "AI_LATENCY_MAX_S": "0",
}
GROUPS = ("api", "workers", "redis", "postgres")


@dataclass
class Layout:
    stack: Stack
    api_port: int
    cores: int
    redis: Redis
    pg_dsn: str

    def processes(self) -> dict[str, list[psutil.Process]]:
        """Each group's processes, children included (uvicorn's workers, PostgreSQL's backends)."""
        assert self.stack.redis is not None
        assert self.stack.pg is not None
        assert self.stack.redis.proc is not None
        assert self.stack.pg.proc is not None
        api = [p for p in self.stack.processes if p.name == "api"]
        workers = [p for p in self.stack.processes if p.name.startswith("worker")]
        return {
            "api": _trees(api),
            "workers": _trees(workers),
            "redis": _trees_of([self.stack.redis.proc.pid]),
            "postgres": _trees_of([self.stack.pg.proc.pid]),
        }

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds (user + system) of each group's live processes, and of this client."""
        out = {name: sum(_cpu(p) for p in procs) for name, procs in self.processes().items()}
        out["client"] = _cpu(psutil.Process())
        return out

    def rss(self) -> dict[str, int]:
        return {name: sum(_rss(p) for p in procs) for name, procs in self.processes().items()}

    async def used_memory(self) -> int:
        return int((await self.redis.info("memory"))["used_memory"])

    async def pg_bytes(self) -> dict[str, int]:
        """pg_total_relation_size (heap, TOAST, indexes) of every table in the public schema."""
        conn = await asyncpg.connect(self.pg_dsn)
        try:
            rows = await conn.fetch(
                "SELECT tablename, pg_total_relation_size(quote_ident(tablename)) AS bytes "
                "FROM pg_tables WHERE schemaname = 'public'"
            )
        finally:
            await conn.close()
        return {r["tablename"]: int(r["bytes"]) for r in rows}

    async def reset(self) -> None:
        """Empty stores between phases: FLUSHDB, and TRUNCATE every table but alembic's."""
        await self.redis.flushdb()
        conn = await asyncpg.connect(self.pg_dsn)
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'"
            )
            names = ", ".join(f'"{t["tablename"]}"' for t in tables)
            await conn.execute("SET lock_timeout = '10s'")
            await conn.execute(f"TRUNCATE {names} CASCADE")
        finally:
            await conn.close()


def start_layout(extra_env: dict[str, str] | None = None) -> Layout:
    """devstack/run.py's sequence, with logs in files of the stack's temp data dir."""
    cores = os.cpu_count() or 1
    env = {**os.environ, **INSTANT_AI, "WEB_CONCURRENCY": str(cores), **(extra_env or {})}
    stack = Stack(env=env, temp_prefix="callstream-realcalls-")
    try:
        stack.start_postgres()
        stack.start_redis()
        stack.migrate()
        for _ in range(cores):
            stack.start_worker()
        api = stack.start_api(extra_args=("--log-level", "warning"))
    except BaseException:
        stack.close()
        raise
    assert api.port is not None
    assert stack.redis is not None
    assert stack.pg is not None
    pg_dsn = stack.pg.url.replace("postgresql+asyncpg://", "postgresql://")
    return Layout(stack, api.port, cores, Redis.from_url(stack.redis.url), pg_dsn)


def _trees(processes: list[Process]) -> list[psutil.Process]:
    return _trees_of([p.pid for p in processes if p.poll() is None])


def _trees_of(pids: list[int]) -> list[psutil.Process]:
    out: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            out += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return out


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def _rss(p: psutil.Process) -> int:
    try:
        return int(p.memory_info().rss)
    except psutil.Error:
        return 0
