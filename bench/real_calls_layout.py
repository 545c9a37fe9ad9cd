"""`make run`'s layout for the real-calls and live-transcripts suites (bench/stack.py's default
Layout, durable: fsync on, Redis AOF everysec), the mock AI made instant unless a suite says
otherwise; and what those suites read of it: the stores' bytes, every group's CPU and memory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from bench.cpu import CpuMeter, rss_bytes
from bench.stack import CORES, INSTANT_AI, BenchStack, Layout, Stores

GROUPS = ("api", "workers", "redis", "postgres")


@dataclass
class RunLayout:
    stack: BenchStack
    meter: CpuMeter
    redis: Redis
    processes: int  # API processes, and workers: the machine's cores, as `make run` starts them

    @property
    def api_port(self) -> int:
        return self.stack.api_port

    @property
    def pg_dsn(self) -> str:
        return self.stack.pg_dsn

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of each group, children included, and of this client."""
        return self.meter.read()

    def rss(self) -> dict[str, int]:
        return {name: rss_bytes(pids) for name, pids in self.stack.pids().items()}

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
        await self.stack.reset()

    async def close(self) -> None:
        await self.redis.aclose()
        self.stack.close()


def start_layout(
    stores: Stores | None, extra_env: Mapping[str, str] | None = None, processes: int = CORES
) -> RunLayout:
    """`processes`: fewer than the cores only for a --quick smoke run (fewer start-ups)."""
    env = {**INSTANT_AI, **(extra_env or {})}
    layout = Layout(api_processes=processes, workers=processes, env=env, durable=True)
    stack = BenchStack(layout, stores)
    return RunLayout(stack, stack.meter(), Redis.from_url(stack.redis_url), processes)
