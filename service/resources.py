"""What the API holds for its lifetime, opened in the lifespan and closed in reverse order."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.access import KeyRing, key_ring
from core.builders import feed_limits, make_ingestion
from core.configured import check_settings
from core.ingestion import Ingestion
from db.breaker_state import BreakerState
from db.engine import make_engine, make_reader, make_sessionmaker
from db.events import EventLog
from db.live import LiveCalls
from db.object_store import ObjectStore
from db.rate_limits import RateLimits
from db.redis_client import RedisClient, close_redis, make_redis, queue_pool
from jobs.queue import QueueClient, call_enqueuer, queue_client, segment_enqueuer
from service.feed import READ_BLOCK_MS, FeedHub
from service.socket_limits import SocketLimits
from settings import Settings


@dataclass(frozen=True)
class ApiResources:
    settings: Settings
    keys: KeyRing  # who may do what (core/access.py)
    redis: RedisClient  # the call keys
    queue: QueueClient  # arq's queue (the same pool today)
    ingestion: Ingestion
    live: LiveCalls
    breaker: BreakerState
    rate_limits: RateLimits
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    reads: AsyncEngine  # one-statement reads: the status (db/engine.make_reader)
    feed: FeedHub  # this process's one reader of the live event feed
    feed_reader: RedisClient  # its connection: blocking reads, apart from the pool
    sockets: SocketLimits  # each key's open sockets and event streams, and its rate of new ones
    objects: ObjectStore | None = None  # AUDIO_STORE_URL: where recordings are read from

    async def close(self) -> None:
        if self.objects is not None:
            await self.objects.close()
        await self.feed.close()
        await close_redis(self.feed_reader)
        await self.reads.dispose()
        await self.engine.dispose()
        await close_redis(self.redis, self.queue.connection_pool)


def open_resources(settings: Settings) -> ApiResources:
    check_settings(settings)
    # The timeout bounds a 503 answer when Redis is gone: a second, never a hang.
    redis = make_redis(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        connect_timeout_s=settings.redis_timeout_s,
        read_timeout_s=settings.redis_timeout_s,
    )
    queue = queue_client(
        queue_pool(
            redis,
            settings.queue_url,
            settings.redis_url,
            max_connections=settings.redis_pool_size,
            timeout_s=settings.redis_timeout_s,
        )
    )
    engine = make_engine(settings.database_url, pool_size=10, connect_timeout_s=2.0)
    # The feed's reader blocks in XREAD for READ_BLOCK_MS: its reads may take that much longer.
    feed_reader = make_redis(
        settings.redis_url,
        max_connections=2,
        connect_timeout_s=settings.redis_timeout_s,
        read_timeout_s=READ_BLOCK_MS / 1000 + max(5.0, settings.redis_timeout_s),
    )
    limits = feed_limits(settings)
    rate_limits = RateLimits(redis)
    return ApiResources(
        settings=settings,
        keys=key_ring(settings),
        redis=redis,
        queue=queue,
        ingestion=make_ingestion(
            redis,
            call_enqueuer(queue),
            settings,
            pipelined=settings.redis_pipelining,
            acknowledging=True,
            enqueue_segment=segment_enqueuer(queue),
        ),
        live=LiveCalls(redis),
        breaker=BreakerState(redis),
        rate_limits=rate_limits,
        engine=engine,
        sessions=make_sessionmaker(engine),
        reads=make_reader(settings.database_url, connect_timeout_s=2.0),
        feed=FeedHub(EventLog(feed_reader, limits), EventLog(redis, limits)),
        feed_reader=feed_reader,
        sockets=SocketLimits(
            rate_limits, settings.ws_max_sockets_per_key, settings.ws_connect_rate_limit
        ),
        objects=ObjectStore(settings.audio_store_url) if settings.audio_store_url else None,
    )
