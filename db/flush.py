"""The Redis side of a flush: read a completed call's packets page by page, and once PostgreSQL
has committed the call's final state, let its keys expire and take it off every index."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from redis.asyncio import Redis

from db.keys import IDLE_INDEX, PENDING_INDEX, UNFLUSHED_INDEX, call_keys
from db.packets import StoredPacket


class FlushSource:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def packet_pages(
        self, call_id: str, page_size: int = 1000
    ) -> AsyncGenerator[list[StoredPacket], None]:
        """Every stored packet of the call, in arrival order, a page at a time: memory stays
        bounded however long the call was."""
        stream = call_keys(call_id).packets
        start = "-"
        while True:
            entries = await self.redis.xrange(stream, min=start, max="+", count=page_size)
            if entries:
                yield [_stored_packet(entry_id, fields) for entry_id, fields in entries]
            if len(entries) < page_size:
                return
            start = "(" + _text(entries[-1][0])

    async def forget_unflushed(self, call_id: str) -> None:
        """The call is in PostgreSQL now: the listing reads it from there."""
        await self.redis.zrem(UNFLUSHED_INDEX, call_id)

    async def release(self, call_id: str, retention_s: int, marker_retention_s: int) -> None:
        """After PostgreSQL committed the final state: let the call's keys expire, drop indexes."""
        keys = call_keys(call_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in (keys.packets, keys.meta, keys.seen, keys.seen_high, keys.metadata):
                pipe.expire(key, retention_s)
            # The done marker outlives the data so late packets still get 409, not a new call.
            pipe.expire(keys.done, marker_retention_s)
            pipe.delete(keys.lease)
            pipe.zrem(PENDING_INDEX, call_id)
            pipe.zrem(UNFLUSHED_INDEX, call_id)
            pipe.zrem(IDLE_INDEX, call_id)
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stored_packet(entry_id: bytes | str, fields: dict[bytes, bytes]) -> StoredPacket:
    millis = int(_text(entry_id).split("-", 1)[0])
    return StoredPacket(
        sequence=int(fields[b"s"]),
        timestamp=float(fields[b"t"]),
        data=fields[b"d"].decode(),
        received_at=millis / 1000.0,
    )
