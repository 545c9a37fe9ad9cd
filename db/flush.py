"""The Redis side of a flush: read a completed call's packets page by page, and once PostgreSQL
has committed the call's final state, let its keys expire and take it off every index."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from db.events import FeedLimits, feed_key, payload
from db.keys import call_keys
from db.packets import StoredPacket
from db.redis_client import RedisClient, execute, text_of
from db.scripts import Script, register


@dataclass(frozen=True, slots=True)
class FlushStart:
    """What one round trip tells a worker that starts on a call."""

    meta: dict[bytes, bytes]  # the call's hash; empty if Redis no longer knows the call
    metadata: bytes | None  # what the call was opened with
    first_page: list[StoredPacket]  # its first packets, in arrival order
    more: bool  # the first page is full: read on with packet_pages(after=...)
    last_entry: str  # the stream id to read on after


class FlushSource:
    def __init__(self, redis: RedisClient, feed: FeedLimits | None = None) -> None:
        self.redis = redis
        self.feed = feed or FeedLimits()
        self._release = register(redis, Script.RELEASE)

    async def start(
        self, call_id: str, holder: str, lease_ttl_s: float, page_size: int
    ) -> FlushStart:
        """Take the call's lease and read the call and its first page of packets, in one round
        trip: a worker starts on hundreds of calls a second, and each round trip costs it CPU."""
        keys = call_keys(call_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.lease, holder, px=int(lease_ttl_s * 1000))
            pipe.hgetall(keys.meta)
            pipe.get(keys.metadata)
            pipe.xrange(keys.packets, min="-", max="+", count=page_size)
            _, meta, metadata, entries = await execute(pipe)
        return FlushStart(
            meta,
            metadata,
            [_stored_packet(entry_id, fields) for entry_id, fields in entries],
            len(entries) >= page_size,
            text_of(entries[-1][0]) if entries else "-",
        )

    async def packet_pages(
        self, call_id: str, page_size: int = 1000, after: str | None = None
    ) -> AsyncGenerator[list[StoredPacket], None]:
        """Every stored packet of the call (after the stream id `after`, if given), in arrival
        order, a page at a time: memory stays bounded however long the call was."""
        stream = call_keys(call_id).packets
        start = "-" if after is None else "(" + after
        while True:
            entries = await self.redis.xrange(stream, min=start, max="+", count=page_size)
            if entries:
                yield [_stored_packet(entry_id, fields) for entry_id, fields in entries]
            if len(entries) < page_size:
                return
            start = "(" + text_of(entries[-1][0])

    async def forget_unflushed(self, call_id: str) -> None:
        """The call is in PostgreSQL now: the listing reads it from there."""
        await self.redis.zrem(call_keys(call_id).shard.unflushed, call_id)

    async def release(
        self,
        call_id: str,
        retention_s: int,
        marker_retention_s: int,
        events: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """After PostgreSQL committed the final state: let the call's keys expire, drop indexes,
        and publish `events` (the final state's) in the same atomic step: a call is released
        once its final event is out, and a re-run that finds it unreleased publishes again."""
        keys = call_keys(call_id)
        await self._release(
            keys=[
                keys.done,
                keys.lease,
                keys.shard.idle,
                keys.shard.unflushed,
                keys.shard.pending,
                feed_key(self.redis, call_id),
                *keys.data,
            ],
            args=[
                call_id,
                retention_s,
                marker_retention_s,
                self.feed.max_len,
                *(payload(event) for event in events),
            ],
        )


def _stored_packet(entry_id: bytes | str, fields: dict[bytes, bytes]) -> StoredPacket:
    millis = int(text_of(entry_id).split("-", 1)[0])
    return StoredPacket(
        sequence=int(fields[b"s"]),
        timestamp=float(fields[b"t"]),
        data=fields[b"d"].decode(),
        received_at=millis / 1000.0,
    )
