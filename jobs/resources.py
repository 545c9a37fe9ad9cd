"""What a worker holds for its lifetime: Redis, PostgreSQL, the AI client; built from settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from db.engine import make_engine, make_sessionmaker
from db.leases import Leases
from db.streams import CallStreams
from jobs.ai import AIClient, MockAI
from jobs.breaker import CircuitBreaker
from settings import Settings


@dataclass(frozen=True)
class WorkerResources:
    settings: Settings
    redis: ArqRedis
    streams: CallStreams
    leases: Leases
    breaker: CircuitBreaker
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    ai: AIClient

    async def close(self) -> None:
        await self.engine.dispose()
        await self.redis.aclose()


def make_redis(settings: Settings, max_connections: int) -> ArqRedis:
    pool = ConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        socket_timeout=settings.redis_timeout_s * 5,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )
    return ArqRedis(pool)


def make_ai_client(settings: Settings) -> AIClient:
    if settings.ai_provider != "mock":
        raise ValueError(f"unknown AI_PROVIDER {settings.ai_provider!r}; this build ships 'mock'")
    return MockAI(
        failure_rate=settings.ai_failure_rate,
        latency_min_s=settings.ai_latency_min_s,
        latency_max_s=settings.ai_latency_max_s,
        seed=settings.ai_seed,
        outage_period_s=settings.ai_outage_period_s,
        outage_duration_s=settings.ai_outage_duration_s,
    )


def make_resources(settings: Settings, ai: AIClient | None = None) -> WorkerResources:
    engine = make_engine(settings.database_url, pool_size=min(settings.worker_max_jobs, 20))
    redis = make_redis(settings, max_connections=settings.worker_max_jobs * 2 + 10)
    return WorkerResources(
        settings=settings,
        redis=redis,
        streams=CallStreams(redis),
        leases=Leases(redis),
        breaker=CircuitBreaker(
            redis, settings.ai_breaker_threshold, settings.ai_breaker_cooldown_s
        ),
        engine=engine,
        sessions=make_sessionmaker(engine),
        ai=ai or make_ai_client(settings),
    )


def resources(ctx: dict[str, Any]) -> WorkerResources:
    """The one typed accessor for what startup put in arq's ctx."""
    res = ctx["resources"]
    assert isinstance(res, WorkerResources)
    return res
