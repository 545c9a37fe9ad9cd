"""Ingestion and the limits it enforces, built from settings: one builder for the API
(service/resources.py) and the worker (jobs/resources.py), so both enforce the same values."""

from __future__ import annotations

import math

from core.backlog import Backlog
from core.ingestion import EnqueueCall, EnqueueSegment, Ingestion, Limits
from db.events import FeedLimits
from db.intake import NO_SEGMENTS, CallIntake, CallLimits, Segmenting
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
    enqueue_segment: EnqueueSegment | None = None,
) -> Ingestion:
    """`enqueue` queues a completed call's job (jobs/queue.py's call_enqueuer);
    `enqueue_segment` a live call's segment flush (segment_enqueuer; None: the call is flushed
    at its end only, as the idle sweep's ingestion needs, which never appends).
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
        segmenting=segmenting(settings) if enqueue_segment is not None else NO_SEGMENTS,
    )
    backlog = Backlog(redis, settings.backlog_limit)
    return Ingestion(intake, enqueue, limits, backlog, enqueue_segment)


def segmenting(settings: Settings) -> Segmenting:
    """When a live call's tail is flushed: every SEGMENT_SECONDS of 20 ms frames, or sooner for
    the local model's live windows (Settings.live_flush_seconds; 0: never). The tail's bound
    stays TAIL_MAX_SEGMENTS segments of SEGMENT_SECONDS, however often it is flushed."""
    every_s = settings.live_flush_seconds
    if every_s == 0:
        return NO_SEGMENTS
    flushes = math.ceil(settings.tail_max_segments * settings.segment_seconds / every_s)
    return Segmenting.of_seconds(every_s, flushes)
