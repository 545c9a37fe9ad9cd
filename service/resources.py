"""What the API holds for its lifetime, opened in the lifespan and closed in reverse order."""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from db.engine import make_engine, make_sessionmaker
from db.streams import CallStreams
from settings import Settings


@dataclass(frozen=True)
class ApiResources:
    settings: Settings
    redis: ArqRedis  # one pool serves both the call keys and the arq queue
    streams: CallStreams
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    async def close(self) -> None:
        await self.engine.dispose()
        await self.redis.aclose()


def open_resources(settings: Settings) -> ApiResources:
    # Short timeouts: when Redis is gone, ingestion must answer 503 within a second, never hang.
    pool = ConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )
    redis = ArqRedis(pool)
    engine = make_engine(settings.database_url, pool_size=10, connect_timeout_s=2.0)
    return ApiResources(
        settings=settings,
        redis=redis,
        streams=CallStreams(redis, pipelined=settings.redis_pipelining),
        engine=engine,
        sessions=make_sessionmaker(engine),
    )
