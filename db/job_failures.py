"""What the reaper counts per unit of work of a call, kept in Redis so that a worker's restart
does not reset it: how many times the call's job was re-run, how many times the flush of its
current segment was asked for again, and the last error one of its jobs met (named in the reason
of a call ended FAILED because a count reached its bound). One hash per call, in the call's slot;
it expires a day after its last change, and goes as soon as the call's job has finished."""

from __future__ import annotations

from dataclasses import dataclass

from db.keys import call_keys
from db.redis_client import RedisClient, execute, text_of

# Far above the time any bound takes to be reached (minutes), so a count never lapses midway.
FAILURES_TTL_S = 24 * 3600
RERUNS = "reruns"  # the call's job run again by the reaper
LAST_ERROR = "error"


def segment_asks(segment: int) -> str:
    """The field counting the requests for the flush of segment number `segment`: a count per
    segment, so each segment has its own bound."""
    return f"segment.{segment}"


@dataclass(frozen=True, slots=True)
class Failures:
    counts: dict[str, int]
    last_error: str | None

    def count(self, unit: str) -> int:
        return self.counts.get(unit, 0)


class JobFailures:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def note_error(self, call_id: str, error: str) -> None:
        """Keep the last error a job of the call met (words without the call's data)."""
        key = call_keys(call_id).failures
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, LAST_ERROR, error)
            pipe.expire(key, FAILURES_TTL_S)
            await execute(pipe)

    async def count(self, call_id: str, unit: str) -> int:
        """One more of `unit` for the call; returns how many there have been."""
        key = call_keys(call_id).failures
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, unit, 1)
            pipe.expire(key, FAILURES_TTL_S)
            counted, _ = await execute(pipe)
        return int(counted)

    async def read(self, call_id: str) -> Failures:
        found = await self.redis.hgetall(call_keys(call_id).failures)  # type: ignore[misc]
        fields = {text_of(k): text_of(v) for k, v in found.items()}
        error = fields.pop(LAST_ERROR, None)
        return Failures({k: int(v) for k, v in fields.items()}, error)

    async def forget(self, call_id: str) -> None:
        """The call's job finished (or the call ended FAILED for a bound): a replay starts with
        every count at zero."""
        await self.redis.delete(call_keys(call_id).failures)
