"""The live event feed's store: one capped Redis stream of call events (state changes, AI attempt
outcomes, throttled ingestion progress). Its ids are the events' ids: increasing, so a reader
resumes after the last one it saw and gets every later event once.

Where a change happens in a Lua script (the first packet, a completion) the script appends the
event itself, in the same atomic step (db/lua/ingest.lua, complete.lua). The worker's changes
happen in PostgreSQL: it appends their events right after the commit (`EventLog.publish`); a
worker that dies in between loses that one event, except a call's final one, which the re-run
that releases the call publishes again (so a feed reader may see a final state twice, never
zero times).

Each entry holds one field, `e`: the event as JSON without its id (the id is the entry's). What
each event type holds, and the bound on its size, is defined once in db/feed_events.py."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.typing import EncodableT, FieldT

from db.feed_events import EXCERPT_CHARS, AttemptEvent, StateEvent, encode
from db.keys import EVENTS, call_keys
from db.redis_client import RedisClient, RedisPipeline, execute, is_cluster, text_of
from db.states import CallState

_FIELD = b"e"


@dataclass(frozen=True, slots=True)
class FeedLimits:
    """How much of the feed Redis keeps (entries, trimmed approximately: whole nodes at a time)
    and how often a live call reports its progress: EVENTS_MAX_LEN and
    EVENTS_PROGRESS_INTERVAL_S, built from the settings by core/builders.py's feed_limits."""

    max_len: int
    progress_interval_s: float


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    body: dict[str, Any]  # type, call_id, state, at, and the type's own fields
    wire: bytes = b""  # the event as its readers get it (JSON with its id): encoded once

    def __post_init__(self) -> None:
        if not self.wire:
            object.__setattr__(self, "wire", orjson.dumps({"id": self.id, **self.body}))

    @property
    def type(self) -> str:
        return str(self.body.get("type", ""))

    @property
    def call_id(self) -> str:
        return str(self.body.get("call_id", ""))

    @property
    def state(self) -> str:
        return str(self.body.get("state", ""))

    def json(self) -> bytes:
        """The event as its readers get it: the body with its id."""
        return self.wire


def id_key(event_id: str) -> tuple[int, int]:
    """An event id as a sortable pair (a bare millisecond time counts as its first id)."""
    millis, _, seq = event_id.partition("-")
    return int(millis), int(seq or 0)


def state_event(call_id: str, state: str, reason: str | None = None, **more: Any) -> dict[str, Any]:
    """The call moved to `state` (db/feed_events.py's StateEvent), as a body for `publish`."""
    return StateEvent(call_id=call_id, state=CallState(state), reason=reason, **more).body()


def attempt_event(call_id: str, state: str, attempt: Any) -> dict[str, Any]:
    """An AI attempt's outcome (db/worker_writes.py's AttemptRecord), as the feed tells it: the
    unit of work it was for (`window`; None: sentiment) and whether it was a live window's."""
    return AttemptEvent(
        call_id=call_id,
        state=CallState(state),
        step=attempt.step,
        attempt=attempt.attempt,
        outcome=attempt.outcome,
        error=attempt.error,
        duration_ms=attempt.duration_ms,
        live=attempt.live,
        window=attempt.window,
    ).body()


def archived_extras(transcript: str | None, sentiment: tuple[str, float] | None) -> dict[str, Any]:
    """What an ARCHIVED event says of the call's results: enough for a dashboard row."""
    extras: dict[str, Any] = {}
    if sentiment is not None:
        extras["sentiment"] = {"label": sentiment[0], "score": sentiment[1]}
    if transcript is not None:
        extras["transcript_excerpt"] = transcript[:EXCERPT_CHARS]
    return extras


def payload(body: Mapping[str, Any], now: float | None = None) -> bytes:
    """An event as stored (stamped `at` now unless it says otherwise); the scripts take it so.
    Every body goes through its model here (db/feed_events.py): one that no model describes, or
    over the size bound, raises rather than reaching a subscriber."""
    return encode(body, time.time() if now is None else now)


# The first packet's event, as its model builds it, but for its call and time: every ingest batch
# carries it (the script tells it only if the batch starts the call), so it is made without a
# validation per batch (38 us against 2): the call id was checked by the ingestion rules.
_FIRST_PACKET = StateEvent(call_id="", state=CallState.IN_PROGRESS).body()


def first_packet_payload(call_id: str, now: float) -> bytes:
    """The IN_PROGRESS event of a call's first packet, stamped `now`, as the ingest script takes
    it; the same as payload(state_event(call_id, "IN_PROGRESS"), now), at a batch's cost."""
    return orjson.dumps({**_FIRST_PACKET, "call_id": call_id, "at": now})


def feed_key(redis: RedisClient, call_id: str) -> str:
    """Where a call's events are appended: the feed itself on a single Redis; on a cluster the
    outbox of the call's shard (its slot), which the relay moves to the feed."""
    return call_keys(call_id).shard.outbox if is_cluster(redis) else EVENTS


class EventLog:
    def __init__(self, redis: RedisClient, limits: FeedLimits) -> None:
        self.redis = redis
        self.limits = limits

    async def publish(self, *bodies: Mapping[str, Any]) -> None:
        """Append events in one round trip (each stamped `at` now unless it says otherwise)."""
        if not bodies:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            self.add(pipe, bodies)
            await execute(pipe)

    def add(self, pipe: RedisPipeline, bodies: Sequence[Mapping[str, Any]]) -> None:
        """Append events as part of another pipeline (a transaction makes them atomic with it)."""
        now = time.time()
        for body in bodies:
            entry: dict[FieldT, EncodableT] = {_FIELD: payload(body, now)}
            key = feed_key(self.redis, str(body["call_id"]))
            pipe.xadd(key, entry, maxlen=self.limits.max_len, approximate=True)

    async def last_id(self) -> str:
        """The newest event's id ("0-0" for an empty feed): where a new reader starts."""
        newest = await self.redis.xrevrange(EVENTS, count=1)
        return text_of(newest[0][0]) if newest else "0-0"

    async def first_id(self) -> str | None:
        oldest = await self.redis.xrange(EVENTS, count=1)
        return text_of(oldest[0][0]) if oldest else None

    async def after(self, event_id: str, count: int, until: str = "+") -> list[Event]:
        """Up to `count` events after `event_id` (and up to `until`, inclusive), oldest first."""
        entries = await self.redis.xrange(EVENTS, min="(" + event_id, max=until, count=count)
        return parse(entries)

    async def read_new(self, after: str, count: int, block_ms: int) -> list[Event]:
        """Events after `after`, waiting up to `block_ms` for the first (XREAD BLOCK)."""
        found = await self.redis.xread({EVENTS: after}, count=count, block=block_ms)
        return parse(found[0][1]) if found else []

    async def lost_since(self, event_id: str) -> bool:
        """True if events after `event_id` may have been trimmed away: the feed no longer holds
        that event itself (trimming takes the oldest first). It may say so when nothing between
        was lost; a reader then re-reads the calls once, which is harmless."""
        first = await self.first_id()
        return first is not None and id_key(first) > id_key(event_id)


def parse(entries: Sequence[tuple[bytes | str, Mapping[bytes, bytes]]]) -> list[Event]:
    events = []
    for entry_id, fields in entries:
        raw = fields.get(_FIELD)
        if raw is None:
            continue  # not ours: skipped rather than failing every reader
        events.append(Event(text_of(entry_id), orjson.loads(raw)))
    return events
