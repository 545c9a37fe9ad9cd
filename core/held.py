"""Packets a transport has taken in but holds back to share one Redis round trip (the media
stream's HOLD_S), by call, in this process. A completion stores them first (Ingestion.complete),
so that a frame that reached the API before the call was completed is stored with it rather
than refused as coming after the end.

This covers a completion that reaches the process holding the frames (a stream's own `stop`,
an HTTP completion or the idle sweep's, through the same API process); a completion that
another process handles meanwhile cannot reach them (docs/api.md says so)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator

# Stores what its transport holds for the call; reports its own failures to its client (the
# completion goes on whatever happened to them).
StoreHeld = Callable[[], Awaitable[None]]


class HeldPackets:
    def __init__(self) -> None:
        self._by_call: dict[str, list[StoreHeld]] = {}

    @contextlib.contextmanager
    def holding(self, call_id: str, store: StoreHeld) -> Iterator[None]:
        """While the block runs, a completion of `call_id` first awaits `store`."""
        self._by_call.setdefault(call_id, []).append(store)
        try:
            yield
        finally:
            stores = self._by_call[call_id]
            stores.remove(store)
            if not stores:
                del self._by_call[call_id]

    async def store(self, call_id: str) -> None:
        for store in list(self._by_call.get(call_id, ())):
            await store()
