"""Conditional reads (RFC 9110 §8.8.3, §13.1.2): a strong ETag derived from the exact body, an
`If-None-Match` that names it answered `304` without a body, and long polling (`wait`) that
holds a request for as long as its answer would be that `304`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Header
from pydantic import BaseModel
from starlette.responses import Response

# Transcripts are personal data: no shared cache may keep them, and a private one must ask
# again (cheaply, with If-None-Match) before it reuses an answer.
CACHE_CONTROL = "private, no-cache"
# A waiting request re-reads the call when the live feed tells of a change (a state, an AI
# attempt, progress), and at least this often: a live call's counters change with every packet,
# and its progress events may be off (EVENTS_PROGRESS_INTERVAL_S=0).
POLL_INTERVAL_S = 1.0
MAX_WAIT_S = 30.0

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE (etagc excludes DQUOTE, so a comma may sit inside).
_ENTITY_TAG = re.compile(r'(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")')


@dataclass(frozen=True, slots=True)
class IfNoneMatch:
    """What the client says it has: any current answer (`*`), or the answers of these tags."""

    any: bool
    tags: frozenset[str]

    def matches(self, etag: str) -> bool:
        # If-None-Match compares weakly (§13.1.2): W/"x" names the answer whose tag is "x".
        return self.any or etag in self.tags


def parse_if_none_match(value: str | None) -> IfNoneMatch | None:
    """The header, also as a list or `*`; None without one. Anything that is not an entity tag
    is skipped, so a garbled header matches nothing and the client gets the full answer."""
    if value is None:
        return None
    if value.strip() == "*":
        return IfNoneMatch(any=True, tags=frozenset())
    return IfNoneMatch(any=False, tags=frozenset(_ENTITY_TAG.findall(value)))


def render(model: BaseModel) -> bytes:
    """The body FastAPI would send for a response model (its fast path is pydantic's JSON)."""
    return model.model_dump_json().encode()


def etag_of(body: bytes) -> str:
    """Strong: two answers share a tag only if they are the same bytes."""
    return f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'


def answer(body: bytes, condition: IfNoneMatch | None) -> Response:
    """200 with the body, or 304 without one if the client already has it; both say how the
    answer may be cached and name its tag."""
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if condition is not None and condition.matches(etag):
        return Response(status_code=304, headers=headers)
    return Response(body, headers=headers, media_type="application/json")


async def wait_for_change(
    body: bytes,
    condition: IfNoneMatch,
    wait_s: float,
    read: Callable[[], Awaitable[bytes]],
    disconnected: Callable[[], Awaitable[bool]],
    changed: Callable[[float], Awaitable[None]],
) -> bytes:
    """Re-read the answer whenever `changed` says it may have changed (it returns then, or after
    the time it is given), at least every POLL_INTERVAL_S, while it would still be a 304 for
    `condition`: for at most `wait_s` seconds or until the client goes away. The last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while condition.matches(etag_of(body)):
        remaining = deadline - loop.time()
        if remaining <= 0 or await disconnected():
            break
        await changed(min(POLL_INTERVAL_S, remaining))
        body = await read()
    return body


@contextlib.asynccontextmanager
async def woken_by(
    events: AsyncIterator[object],
) -> AsyncIterator[Callable[[float], Awaitable[None]]]:
    """A `changed` for wait_for_change from a feed subscription: it returns as soon as an event
    came since it last returned, or when its time is up."""
    woken = asyncio.Event()

    async def watch() -> None:
        async for _ in events:
            woken.set()

    watcher = asyncio.create_task(watch())

    async def changed(timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), timeout_s)
        woken.clear()

    try:
        yield changed
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


IfNoneMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        description="ETags of answers you have (a list, or `*`): `304` without a body if the "
        "answer is still one of them.",
    ),
]

_CONDITIONAL_HEADERS: dict[str, Any] = {
    "ETag": {
        "description": "Strong tag of this exact body; send it back in If-None-Match.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": "`private, no-cache`: personal data, revalidate before reuse.",
        "schema": {"type": "string"},
    },
}

# The 200 and the 304 of a conditional read, for a route's `responses`.
CONDITIONAL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": _CONDITIONAL_HEADERS},
    304: {
        "description": "Not modified: the answer is still the one If-None-Match names (or, "
        "with `wait`, has not changed). No body.",
        "headers": _CONDITIONAL_HEADERS,
    },
}
