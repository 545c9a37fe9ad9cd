"""Every Redis Lua script, kept as a file in db/lua/ and registered once per client: redis-py
then calls it by its hash (EVALSHA) and reloads it if Redis restarted and forgot it."""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


class Script(StrEnum):
    INGEST = "ingest"  # a call's packets: dedup, append, ordering, gaps, counters
    COMPLETE = "complete"  # SET NX completion, idle and pending indexes
    LEASE_RENEW = "lease_renew"
    LEASE_DROP = "lease_drop"
    BREAKER_FAILURE = "breaker_failure"
    AI_SLOTS_ACQUIRE = "ai_slots_acquire"  # the shared AI concurrency limit
    AI_SLOTS_PAUSE = "ai_slots_pause"
    CLAIM_JOBS = "claim_jobs"  # a job queue's waiting jobs, claimed in one step (jobs/polling.py)


@cache
def source(script: Script) -> str:
    return resources.files("db").joinpath("lua", f"{script.value}.lua").read_text()


def register(redis: Redis, script: Script) -> AsyncScript:
    return redis.register_script(source(script))
