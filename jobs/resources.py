"""What a worker holds for its lifetime: Redis, PostgreSQL, the AI client; built from settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.audio import UnsupportedAudio, parse_format
from core.builders import feed_limits, make_ingestion
from core.configured import check_settings
from core.ingestion import Ingestion
from db.ai_slots import AiSlots
from db.engine import autocommit, make_engine, make_sessionmaker
from db.events import EventLog
from db.flush import FlushSource
from db.leases import Leases
from db.live import LiveCalls
from db.object_store import ObjectStore
from db.outbox import Webhooks, event_types
from db.redis_client import RedisClient, close_redis, make_redis, queue_pool
from jobs.ai import AIClient, MockAI
from jobs.ai_limit import AiLimiter
from jobs.ai_local import LocalAI
from jobs.ai_openai import OpenAICompatible
from jobs.audio import timeout_per_audio_s, transcription_allowance_s
from jobs.breaker import CircuitBreaker
from jobs.heartbeat import LeaseKeeper
from jobs.queue import QueueClient, call_enqueuer, queue_client
from jobs.stages import StageClock
from settings import Settings


@dataclass(frozen=True)
class WorkerResources:
    settings: Settings
    redis: RedisClient  # the call keys
    queue: QueueClient  # arq's queue (the same pool today)
    ingestion: Ingestion  # completes idle calls, as the API completes the others
    live: LiveCalls
    flush: FlushSource
    events: EventLog  # the live feed: the worker's state changes and AI attempts
    leases: Leases
    lease_keeper: LeaseKeeper  # renews the leases of every call this worker runs
    breaker: CircuitBreaker
    ai_limiter: AiLimiter  # AI_MAX_CONCURRENCY, shared by every worker
    engine: AsyncEngine
    autocommit: AsyncEngine  # the same pool, for statements atomic on their own
    sessions: async_sessionmaker[AsyncSession]
    # Reads of one statement each on the autocommit engine: a read costs one round trip, where
    # a session's costs three (BEGIN, the read, ROLLBACK). Under READ COMMITTED each statement
    # sees its own snapshot anyway; a read that needs one snapshot for several statements, and
    # any write, takes `sessions` (or `engine.begin()`).
    reads: async_sessionmaker[AsyncSession]
    ai: AIClient
    webhooks: Webhooks  # who wants which events: written with the states (db/outbox.py)
    objects: ObjectStore | None = None  # AUDIO_STORE_URL: where segments' bytes go
    stages: StageClock = field(default_factory=StageClock)

    async def close(self) -> None:
        await self.lease_keeper.close()
        await self.ai.aclose()
        if self.objects is not None:
            await self.objects.close()
        await self.engine.dispose()
        await close_redis(self.redis, self.queue.connection_pool)


def make_ai_client(settings: Settings) -> AIClient:
    """The provider AI_PROVIDER names (settings.py checked that it has what it needs)."""
    try:  # a wrong PACKET_AUDIO_ENCODING stops the worker at start, not every call later
        parse_format(settings.packet_audio_encoding)
    except UnsupportedAudio as exc:
        raise ValueError(f"PACKET_AUDIO_ENCODING: {exc}") from None
    if settings.ai_provider == "local":
        return LocalAI(processes=ai_concurrency(settings), model=settings.ai_local_model,
                       pack=settings.local_window_seconds > 0)  # fmt: skip
    if settings.ai_provider == "openai":
        assert settings.ai_base_url
        assert settings.ai_transcription_model
        return OpenAICompatible(
            settings.ai_base_url,
            settings.ai_api_key,
            settings.ai_transcription_model,
            settings.ai_sentiment_model,
            local_sentiment=settings.ai_sentiment == "local",
            max_upload_bytes=settings.ai_max_upload_bytes,
            request_timeout_s=settings.ai_attempt_timeout_s,
            timeout_per_audio_s=timeout_per_audio_s(settings),
        )
    return MockAI(
        failure_rate=settings.ai_failure_rate,
        latency_min_s=settings.ai_latency_min_s,
        latency_max_s=settings.ai_latency_max_s,
        seed=settings.ai_seed,
        outage_period_s=settings.ai_outage_period_s,
        outage_duration_s=settings.ai_outage_duration_s,
    )


def ai_concurrency(settings: Settings) -> int:
    """AI_MAX_CONCURRENCY; the local provider's requests are CPU work on this machine, so for it
    no more than the cores this process may use."""
    if settings.ai_provider == "local":
        return min(settings.ai_max_concurrency, len(os.sched_getaffinity(0)))
    return settings.ai_max_concurrency


def ai_slot_ttl_s(settings: Settings) -> float:
    """A slot outlives the longest request it can cover (a dead worker's slot comes back then):
    twice the attempt timeout, plus the most a transcription's timeout grows with its audio."""
    return settings.ai_attempt_timeout_s * 2 + 5 + transcription_allowance_s(settings, float("inf"))


def make_resources(settings: Settings, ai: AIClient | None = None) -> WorkerResources:
    check_settings(settings)
    # No ping per checkout: a job that meets a dropped connection is retried (db.outages).
    # A fixed pool: jobs queue for a connection rather than open and close extra ones.
    engine = make_engine(
        settings.database_url,
        pool_size=min(settings.worker_max_jobs, 20),
        pre_ping=False,
        overflow=False,
    )
    # Longer reads than the API's: a worker may wait, a PBX's request may not.
    redis = make_redis(
        settings.redis_url,
        max_connections=settings.worker_max_jobs * 2 + 10,
        connect_timeout_s=settings.redis_timeout_s,
        read_timeout_s=settings.redis_timeout_s * 5,
    )
    queue = queue_client(
        queue_pool(
            redis,
            settings.queue_url,
            settings.redis_url,
            max_connections=64,
            timeout_s=settings.redis_timeout_s * 5,
        )
    )
    leases = Leases(redis)
    events = EventLog(redis, feed_limits(settings))
    reads = autocommit(engine)
    return WorkerResources(
        settings=settings,
        redis=redis,
        queue=queue,
        ingestion=make_ingestion(redis, call_enqueuer(queue), settings, pipelined=False),
        live=LiveCalls(redis),
        flush=FlushSource(redis, feed_limits(settings)),
        events=events,
        leases=leases,
        lease_keeper=LeaseKeeper(leases, settings.lease_ttl_s),
        breaker=CircuitBreaker(
            redis, settings.ai_breaker_threshold, settings.ai_breaker_cooldown_s
        ),
        ai_limiter=AiLimiter(AiSlots(redis, ai_concurrency(settings), ai_slot_ttl_s(settings))),
        engine=engine,
        autocommit=reads,
        sessions=make_sessionmaker(engine),
        reads=make_sessionmaker(reads),
        ai=ai or make_ai_client(settings),
        webhooks=Webhooks(
            settings.webhook_urls,
            event_types(settings.webhook_events),
            settings.speaker_names,
            settings.public_base_url,
        ),
        objects=ObjectStore(settings.audio_store_url) if settings.audio_store_url else None,
    )


def resources(ctx: dict[str, Any]) -> WorkerResources:
    """The one typed accessor for what startup put in arq's ctx."""
    res = ctx["resources"]
    assert isinstance(res, WorkerResources)
    return res
