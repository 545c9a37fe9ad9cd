"""Ingestion and the limits it enforces, built from settings: one builder for the API
(service/resources.py) and the worker (jobs/resources.py), so both enforce the same values."""

from __future__ import annotations

from core.backlog import Backlog
from core.ingestion import EnqueueCall, Ingestion, Limits
from db.events import FeedLimits
from db.intake import CallIntake, CallLimits
from db.pipelining import Replication
from db.redis_client import RedisClient
from settings import Settings


def replication(settings: Settings) -> Replication | None:
    """What an acknowledgement waits for (REDIS_WAIT_REPLICAS), None when nothing."""
    if settings.redis_wait_replicas == 0:
        return None
    return Replication(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)


def feed_limits(settings: Settings) -> FeedLimits:
    return FeedLimits(settings.events_max_len, settings.events_progress_interval_s)


def call_limits(settings: Settings) -> CallLimits:
    return CallLimits(max_packets=settings.max_call_packets, max_bytes=settings.max_call_bytes)


def make_ingestion(
    redis: RedisClient,
    enqueue: EnqueueCall,
    settings: Settings,
    *,
    pipelined: bool,
    acknowledging: bool = False,
) -> Ingestion:
    """`enqueue` queues a completed call's job (jobs/queue.py's call_enqueuer).
    `pipelined`: let concurrent requests share Redis round trips (the API, not the sweep).
    `acknowledging`: its answers reach clients (the API), so they wait for REDIS_WAIT_REPLICAS;
    the idle sweep's completions do not (a sweep stalled by a lost replica would leave every
    quiet call open)."""
    limits = Limits(
        max_packet_data_bytes=settings.max_packet_data_bytes,
        max_batch_packets=settings.max_batch_packets,
        metadata_ttl_s=settings.completed_marker_retention_s,
    )
    intake = CallIntake(
        redis,
        pipelined=pipelined,
        limits=call_limits(settings),
        feed=feed_limits(settings),
        replication=replication(settings) if acknowledging else None,
    )
    return Ingestion(intake, enqueue, limits, Backlog(redis, settings.backlog_limit))
