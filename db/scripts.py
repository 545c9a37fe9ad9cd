"""Every Redis Lua script, kept as a file in db/lua/ and registered once per client: redis-py
then calls it by its hash (EVALSHA) and reloads it if Redis restarted and forgot it."""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from importlib import resources
from typing import cast

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from db.redis_client import RedisClient


class Script(StrEnum):
    INGEST = "ingest"  # a call's packets: dedup, append, ordering, gaps, counters
    COMPLETE = "complete"  # SET NX completion, idle and pending indexes
    RELEASE = "release"  # a finished call's keys expire, its indexes and final events
    SEGMENT_DONE = "segment_done"  # a flushed segment's entries leave the stream
    REPLAYED = "replayed"  # a replayed dead letter: pending again, and its event
    RELAY = "relay"  # shard outboxes to the one feed, exactly once (db/feed_relay.py)
    LEASE_RENEW = "lease_renew"
    LEASE_DROP = "lease_drop"
    BREAKER_FAILURE = "breaker_failure"
    AI_SLOTS_ACQUIRE = "ai_slots_acquire"  # the shared AI concurrency limit
    AI_SLOTS_PAUSE = "ai_slots_pause"
    CLAIM_JOBS = "claim_jobs"  # a job queue's waiting jobs, claimed in one step (jobs/polling.py)
    ENQUEUE_JOB = "enqueue_job"  # a job queued in one step, idle workers woken (jobs/queue.py)


@cache
def source(script: Script) -> str:
    return resources.files("db").joinpath("lua", f"{script.value}.lua").read_text()


def register(redis: RedisClient, script: Script) -> AsyncScript:
    # AsyncScript needs only EVALSHA and SCRIPT LOAD, which a cluster client routes by the
    # script's keys (and loads on the node that asks): its type names Redis alone.
    return AsyncScript(cast(Redis, redis), source(script))


def registered(redis: RedisClient, script: Script) -> AsyncScript:
    """`register`'s script, made once per client and kept on it (as redis-py keeps its own
    state there), for callers that run it on a client they do not own: arq's pool, a worker's."""
    name = f"_callstream_script_{script.value}"
    held: AsyncScript | None = vars(redis).get(name)
    if held is None:
        held = vars(redis)[name] = register(redis, script)
    return held
