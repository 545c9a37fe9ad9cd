"""One heartbeat per worker process for every lease it holds: however many calls are in flight,
renewing their leases costs one Redis round trip every LEASE_TTL_S/3, not one task and one round
trip per call. A lease that lapses tells the reaper the worker died."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator

from db.leases import Leases

log = logging.getLogger(__name__)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


class LeaseKeeper:
    def __init__(self, leases: Leases, ttl_s: float) -> None:
        self.leases = leases
        self.ttl_s = ttl_s
        self._held: dict[str, str] = {}  # holder -> call id (one call may run twice at once)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def hold(self, call_id: str, *, caller_takes: bool = False) -> AsyncIterator[str]:
        """Take the call's lease (the newest runner wins; older ones are fenced) and keep it
        renewed until the block ends. Yields the holder name. With `caller_takes`, the lease is
        not taken here: the caller takes it under that holder name, first thing in the block, in
        a round trip it makes anyway."""
        holder = f"{WORKER_ID}:{uuid.uuid4().hex[:8]}"
        if not caller_takes:
            await self.leases.take(call_id, holder, self.ttl_s)
        self._held[holder] = call_id
        self._start()
        try:
            yield holder
        finally:
            self._held.pop(holder, None)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.create_task(self._beat(), name="lease-keeper")

    async def _beat(self) -> None:
        # Stopped by an event, never cancelled: cancelling a redis-py command midway can leave
        # its connection broken for the next user of the pool.
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.ttl_s / 3)
                return
            held = dict(self._held)
            try:
                renewed = await self.leases.renew_many(held, self.ttl_s)
            except Exception as exc:  # Redis blips must not kill the jobs; the fence protects us
                log.warning("lease renewal failed for %d calls: %r", len(held), exc)
                continue
            for holder, ok in renewed.items():
                if not ok and self._held.pop(holder, None) is not None:
                    log.warning("%s: lease taken over by another worker", held[holder])

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.shield(self._task)
