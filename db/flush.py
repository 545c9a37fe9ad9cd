"""The Redis side of a flush: read a call's unflushed tail (its stream) page by page; once
PostgreSQL has committed a segment, trim its entries (segment_done); once it has committed the
call's final state, release the call: all it sent goes, only its done marker stays, and it
leaves every index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from db.events import FeedLimits, feed_key, payload
from db.keys import call_keys
from db.packets import StoredPacket
from db.redis_client import RedisClient, execute, unparsed
from db.scripts import Script, register


@dataclass(frozen=True, slots=True)
class FlushStart:
    """What one round trip tells a worker that starts on a call."""

    meta: dict[bytes, bytes]  # the call's hash; empty if Redis no longer knows the call
    metadata: bytes | None  # what the call was opened with
    first_page: list[StoredPacket]  # the first packets of its unflushed tail, in arrival order
    more: bool  # the first page is full: read on with entries(after=...)


class FlushSource:
    def __init__(self, redis: RedisClient, feed: FeedLimits) -> None:
        self.redis = redis
        self.feed = feed
        # Its pages unparsed: redis-py's dict an entry cost ~1 µs of CPU an entry, and 3,000
        # objects a live segment more for the collector (a cluster's are still parsed).
        self._pages = unparsed(redis, "XRANGE")
        self._release = register(redis, Script.RELEASE)
        self._segment_done = register(redis, Script.SEGMENT_DONE)

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
        )

    async def quiet_for_ms(self, call_id: str) -> int | None:
        """How long since the call's newest unflushed packet came (on Redis' clock, which gave
        its stream id); None when its tail is empty."""
        keys = call_keys(call_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrevrange(keys.packets, "+", "-", count=1)
            pipe.time()
            newest, (seconds, micros) = await execute(pipe)
        if not newest:
            return None
        entry_id = newest[0][0]
        entry_ms = int(
            (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0]
        )
        return int(seconds) * 1000 + int(micros) // 1000 - entry_ms

    async def entries(
        self, call_id: str, count: int, after: tuple[int, int] | None = None
    ) -> list[StoredPacket]:
        """Up to `count` packets of the call's unflushed tail, in arrival (stream) order, after
        the stream id `after` if given."""
        start = "-" if after is None else f"({after[0]}-{after[1]}"
        found = await self._pages.xrange(call_keys(call_id).packets, start, "+", count=count)
        return [_stored_packet(entry_id, fields) for entry_id, fields in found]

    async def page(
        self,
        call_id: str,
        count: int,
        max_bytes: int,
        after: tuple[int, int] | None = None,
        held: int = 0,
        step: int = 500,
    ) -> tuple[list[StoredPacket], bool]:
        """Up to `count` packets after `after`, cut where their data and the `held` bytes of
        the page they continue would pass `max_bytes` (a page has one packet at least): read
        `step` entries at a time, so that a page of large packets holds about `max_bytes` and
        `step` entries more, not `count` of them. Returns them and whether the stream may hold
        more."""
        found: list[StoredPacket] = []
        size = held
        while len(found) < count:
            wanted = min(step, count - len(found))
            read = await self.entries(call_id, wanted, found[-1].entry if found else after)
            for packet in read:
                if (found or held) and size + len(packet.data) > max_bytes:
                    return found, True
                found.append(packet)
                size += len(packet.data)
            if len(read) < wanted:
                return found, False
        return found, True

    async def segment_done(
        self,
        call_id: str,
        through: tuple[int, int] | None,
        events: Sequence[Mapping[str, Any]] = (),
        *,
        row_stored: bool = False,
    ) -> int:
        """PostgreSQL holds the call's entries up to the stream id `through` (None: no new
        ones): trim them, let the next segment be asked for, and publish `events`; with
        `row_stored` (the final flush: PostgreSQL holds the call's row too) the call leaves the
        unflushed index in the same step. Returns the entries left."""
        keys = call_keys(call_id)
        left = await self._segment_done(
            keys=[
                keys.packets,
                keys.meta,
                keys.shard.segments,
                feed_key(self.redis, call_id),
                keys.shard.unflushed,
            ],
            args=[
                call_id,
                "" if through is None else f"{through[0]}-{through[1] + 1}",
                self.feed.max_len,
                "1" if row_stored else "0",
                *(payload(event) for event in events),
            ],
        )
        return int(left)

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
        """After PostgreSQL committed the final state: delete everything the call sent (its
        stream, dedup runs, hash and metadata), its lease and its jobs' failure counts, drop it
        from the indexes, keep only its done marker (for `marker_retention_s`), and publish
        `events` (the final state's) in the same atomic step: a call is released once its final
        event is out, and a re-run that finds it unreleased publishes again. Its stream's
        entries are all in PostgreSQL's segments by then (the final flush stored them before
        the final state), unless a store refused them: then what it sent expires after
        `retention_s` instead, for a replay to store."""
        keys = call_keys(call_id)
        await self._release(
            keys=[
                keys.done,
                keys.lease,
                keys.shard.idle,
                keys.shard.unflushed,
                keys.shard.pending,
                keys.shard.segments,
                feed_key(self.redis, call_id),
                keys.failures,
                *keys.data,  # the stream first
            ],
            args=[
                call_id,
                retention_s,
                marker_retention_s,
                self.feed.max_len,
                *(payload(event) for event in events),
            ],
        )


def _stored_packet(entry_id: bytes, fields: list[bytes] | dict[bytes, bytes]) -> StoredPacket:
    """An entry as Redis sent it (its fields a flat list) or as redis-py parsed it (a dict). In
    the order db/lua/ingest.lua adds them (k, s, t, d), they are read by place; in any other,
    by name."""
    millis, _, n = entry_id.partition(b"-")
    ms = int(millis)
    if (
        type(fields) is list
        and len(fields) == 8
        and fields[0] == b"k"
        and fields[2] == b"s"
        and fields[4] == b"t"
        and fields[6] == b"d"
    ):
        track, sequence, timestamp, data = fields[1], fields[3], fields[5], fields[7]
    else:
        named = (
            fields
            if isinstance(fields, dict)
            else dict(zip(fields[::2], fields[1::2], strict=True))
        )
        track, sequence = named.get(b"k", b"0"), named[b"s"]
        timestamp, data = named[b"t"], named[b"d"]
    return StoredPacket(
        int(sequence), float(timestamp), data.decode(), ms / 1000.0, int(track), (ms, int(n))
    )
