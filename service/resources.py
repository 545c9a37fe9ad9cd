"""What the API holds for its lifetime, opened in the lifespan and closed in reverse order."""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.access import KeyRing, key_ring
from core.ingestion import Ingestion, make_ingestion
from db.breaker_state import BreakerState
from db.engine import make_engine, make_sessionmaker
from db.live import LiveCalls
from db.rate_limits import RateLimits
from db.redis_client import make_redis_pool
from jobs.queue import queue_client
from settings import Settings


@dataclass(frozen=True)
class ApiResources:
    settings: Settings
    keys: KeyRing  # who may do what (core/access.py)
    redis: Redis  # the call keys
    queue: ArqRedis  # arq's queue (the same pool today)
    ingestion: Ingestion
    live: LiveCalls
    breaker: BreakerState
    rate_limits: RateLimits
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    async def close(self) -> None:
        await self.engine.dispose()
        await self.redis.connection_pool.aclose()


def open_resources(settings: Settings) -> ApiResources:
    # The timeout bounds a 503 answer when Redis is gone: a second, never a hang.
    pool = make_redis_pool(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        connect_timeout_s=settings.redis_timeout_s,
        read_timeout_s=settings.redis_timeout_s,
    )
    redis = Redis(connection_pool=pool)
    queue = queue_client(pool)
    engine = make_engine(settings.database_url, pool_size=10, connect_timeout_s=2.0)
    return ApiResources(
        settings=settings,
        keys=key_ring(settings),
        redis=redis,
        queue=queue,
        ingestion=make_ingestion(redis, queue, settings, pipelined=settings.redis_pipelining),
        live=LiveCalls(redis),
        breaker=BreakerState(redis),
        rate_limits=RateLimits(redis),
        engine=engine,
        sessions=make_sessionmaker(engine),
    )
