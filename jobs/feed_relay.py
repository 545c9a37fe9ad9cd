"""The feed relay's loop, run by every worker on a Redis Cluster (db/feed_relay.py says why): the
one holding the relay's lease moves the shards' events to the feed every RELAY_INTERVAL_S, the
others stand by to take over within the lease's life if it dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from redis.exceptions import RedisError

from db.feed_relay import PAGE, FeedRelay
from jobs.heartbeat import WORKER_ID

log = logging.getLogger(__name__)

RELAY_INTERVAL_S = 0.05  # what the relay adds to an event's delay on a cluster, at most
LEASE_MS = 3_000  # a dead relay's successor starts within this


class RelayLoop:
    def __init__(self, relay: FeedRelay) -> None:
        self.relay = relay
        self.holder = f"{WORKER_ID}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="feed-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            moved = 0
            try:
                if await self.relay.hold(self.holder, LEASE_MS):
                    moved = await self.relay.step()
            except (RedisError, OSError) as exc:
                # A node failing over: the events wait in their outboxes, nothing is lost.
                log.warning("feed relay: %s; retrying", exc)
                await asyncio.sleep(1.0)
            if moved < PAGE:  # a full page: more is waiting, go on at once
                await asyncio.sleep(RELAY_INTERVAL_S)
