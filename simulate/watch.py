"""Following a sent call until it is ARCHIVED or FAILED: long polls of GET /v1/calls/{id}
(If-None-Match + wait), so a call costs a request per change of state, not one per second.

Every call follows its own call, but only `slots` requests are held at once (the server re-reads
a held call four times a second, and reads are rate-limited per key).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from simulate.transports import check_access, problem, retry_after_s

FINAL_STATES = frozenset({"ARCHIVED", "FAILED"})
WAIT_S = 10.0  # one long poll; the server allows up to 30
RETRY_S = 1.0  # after a failed request: the server may be restarting
REQUEST_MARGIN_S = 10.0  # beyond the wait, how long one poll may take


@dataclass
class Seen:
    """The latest of a call that the server answered, and when a final state was first seen."""

    record: dict[str, Any] | None = None
    final_seen_at: float | None = None  # epoch seconds
    error: str | None = None  # the last request that failed, while it is the latest news
    requests: int = 0

    @property
    def state(self) -> str | None:
        return None if self.record is None else str(self.record.get("state"))

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class Watcher:
    def __init__(self, client: httpx.AsyncClient, slots: int, wait_s: float = WAIT_S) -> None:
        self.client = client
        self.slots = asyncio.Semaphore(slots)
        self.wait_s = wait_s

    async def read(self, call_id: str) -> Seen:
        """One plain read of the call (no wait)."""
        seen = Seen()
        await self._poll(call_id, seen, None)
        return seen

    async def until_final(self, call_id: str, seen: Seen) -> None:
        """Poll until the call is final, filling `seen` as answers come (the caller cancels this
        at its deadline and keeps what `seen` holds)."""
        etag: str | None = None
        while not seen.final:
            etag = await self._poll(call_id, seen, etag)

    async def _poll(self, call_id: str, seen: Seen, etag: str | None) -> str | None:
        """One request: returns the ETag to wait on next."""
        # The first read has no ETag: it answers at once (the call may already be final).
        params = {"wait": f"{self.wait_s:g}"} if etag else {}
        headers = {"If-None-Match": etag} if etag else {}
        async with self.slots:
            seen.requests += 1
            try:
                response = await self.client.get(
                    f"/v1/calls/{call_id}",
                    params=params,
                    headers=headers,
                    timeout=self.wait_s + REQUEST_MARGIN_S,
                )
            except httpx.HTTPError as exc:
                seen.error = f"GET /v1/calls/{call_id}: {type(exc).__name__}: {exc}".rstrip(": ")
                response = None
        if response is None:
            await asyncio.sleep(RETRY_S)
            return etag
        check_access(response, "reading a call (GET /v1/calls/{id})")
        if response.status_code == 304:
            return etag
        if response.status_code != 200:
            seen.error = problem(response)
            await asyncio.sleep(retry_after_s(response))
            return etag
        seen.error = None
        seen.record = response.json()
        if seen.final and seen.final_seen_at is None:
            seen.final_seen_at = time.time()
        etag_now: str | None = response.headers.get("etag")
        return etag_now
