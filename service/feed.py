"""The live feed's fan-out: one reader per API process follows the event stream (a blocking
XREAD on a connection of its own) and hands each event to every subscriber of this process whose
filter it matches. Hundreds of idle subscribers cost no Redis round trip per event: only the one
reader reads.

A subscriber that resumes (Last-Event-ID) first reads what it missed from Redis, up to where the
reader was when it subscribed, then takes the reader's events from there on: nothing between is
lost or repeated. A subscriber too slow to keep up with its bounded queue is not a reason to block
the others: it is marked lagging, its queue is left to drain, and it catches up from Redis the
same way (from the last event it delivered).

With no subscriber the reader does not read: it waits for one (ready()), then starts from where
the feed ends then. A process nobody watches (most API processes, most of the time) pays nothing
per event; the reader's reads were 7% of the API's CPU at 60 live calls (BENCHMARKS.md,
Real-time capacity).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from db.events import Event, EventLog, id_key
from db.redis_client import close_redis

log = logging.getLogger(__name__)

READ_BLOCK_MS = 1_000  # the reader's XREAD waits this long for new events, then asks again
READ_BATCH = 500  # events per read
HISTORY_PAGE = 500  # events per read while a subscriber catches up
QUEUE_SIZE = 2_000  # events a subscriber may have waiting before it is lagging
CLOSE_WAIT_S = READ_BLOCK_MS / 1000 + 0.5  # close() waits at most this for the reader
READY_TIMEOUT_S = 3.0  # a subscriber waits this long for a reader that cannot reach Redis
RETRY_S = (0.1, 0.5, 1.0, 2.0)  # the reader's waits after Redis errors, then the last again


@dataclass(frozen=True, slots=True)
class Reset:
    """Events the subscriber should have had are gone (trimmed, or lost while Redis was down):
    it must re-read the calls it shows, then carry on with the events that follow."""

    reason: str


@dataclass(frozen=True, slots=True)
class EventFilter:
    call_id: str | None = None
    states: frozenset[str] = frozenset()

    def matches(self, event: Event) -> bool:
        if self.call_id is not None and event.call_id != self.call_id:
            return False
        return not self.states or event.state in self.states


async def _drain(queue: asyncio.Queue[Event | Reset]) -> list[Event | Reset]:
    """The next item, and every other one already waiting."""
    ready = [await queue.get()]
    while not queue.empty():
        ready.append(queue.get_nowait())
    return ready


def _after(position: str, items: list[Event | Reset]) -> tuple[list[Event | Reset], str]:
    """The items not yet delivered (events after `position`), and the new position."""
    batch: list[Event | Reset] = []
    for item in items:
        if isinstance(item, Event):
            if id_key(item.id) <= id_key(position):
                continue
            position = item.id
        batch.append(item)
    return batch, position


@dataclass(eq=False)
class _Subscriber:
    wanted: EventFilter
    queue: asyncio.Queue[Event | Reset] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_SIZE)
    )
    lagging: bool = False

    def offer(self, item: Event | Reset) -> None:
        if self.lagging:
            return
        if self.queue.full():
            self.lagging = True  # it catches up from Redis once it has drained its queue
            return
        self.queue.put_nowait(item)


class FeedHub:
    def __init__(self, reader_log: EventLog, log_: EventLog) -> None:
        """`reader_log` reads on a connection of its own (its reads block for seconds);
        `log_` serves the subscribers' catch-up reads."""
        self._reader_log = reader_log
        self._log = log_
        self._subscribers: set[_Subscriber] = set()
        self._position = "0-0"  # the last event handed out; set when the reader starts
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # the reader knows where the feed ends
        self._wanted = asyncio.Event()  # a subscriber is on its way: a waiting reader reads
        self._joining = 0  # callers inside ready(): the reader does not go waiting on them
        self._closing = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, wanted: EventFilter, resume_after: str | None = None
    ) -> AsyncIterator[AsyncIterator[list[Event | Reset]]]:
        """Subscribed on entry: every event matching `wanted` from then on (or from after
        `resume_after`) comes out of the iterator it gives, in order, as batches of whatever is
        ready (a transport writes a batch at once); a Reset first if some of those are no
        longer kept. The subscription ends with the block."""
        await self.ready()
        subscriber = _Subscriber(wanted)
        self._subscribers.add(subscriber)
        # From here on the reader offers it every event after this position (a reader that
        # went waiting since ready() wakes, and reads on from this position).
        joined_at = self._position
        self._wanted.set()
        try:
            yield self._batches(subscriber, joined_at, resume_after)
        finally:
            self._subscribers.discard(subscriber)

    async def _batches(
        self, subscriber: _Subscriber, joined_at: str, resume_after: str | None
    ) -> AsyncIterator[list[Event | Reset]]:
        wanted, position = subscriber.wanted, joined_at
        if resume_after is not None and id_key(resume_after) < id_key(joined_at):
            async for batch in self._missed(wanted, resume_after, joined_at):
                yield batch
        elif resume_after is not None:
            # The client saw events this process's reader has not handed out yet (it read them
            # from another API process): they will come through the queue; skip them.
            position = resume_after
        while True:
            if subscriber.lagging and subscriber.queue.empty():
                # Drained what it had: read the rest from Redis, then rejoin the reader.
                subscriber.lagging, caught_up_to = False, self._position
                if id_key(position) < id_key(caught_up_to):
                    async for page in self._history(wanted, position, caught_up_to):
                        yield list(page)
                    position = caught_up_to
                continue
            batch, position = _after(position, await _drain(subscriber.queue))
            if batch:
                yield batch

    async def _missed(
        self, wanted: EventFilter, resume_after: str, joined_at: str
    ) -> AsyncIterator[list[Event | Reset]]:
        """What a resuming subscriber missed before it joined, from Redis; a Reset first if
        the feed no longer holds all of it."""
        if await self._log.lost_since(resume_after):
            yield [Reset("the feed no longer holds the events after the given id")]
        async for page in self._history(wanted, resume_after, joined_at):
            yield list(page)

    async def _history(
        self, wanted: EventFilter, after: str, until: str
    ) -> AsyncIterator[list[Event]]:
        """The matching events after `after` up to `until`, a page at a time."""
        while True:
            page = await self._log.after(after, HISTORY_PAGE, until)
            matching = [event for event in page if wanted.matches(event)]
            if matching:
                yield matching
            if len(page) < HISTORY_PAGE:
                return
            after = page[-1].id

    async def ready(self) -> None:
        """Return once the reader knows where the feed ends; raise a Redis ConnectionError (a
        503, like any request that finds Redis gone) if it cannot learn it soon."""
        self.start()
        # Counted, not only signalled: on Python 3.11 wait_for looks at _ready a turn later,
        # and a reader whose read ends in this turn with nobody subscribed would clear both
        # events and wait for a subscriber that waits for it (a 503 after 3 s, seen in CI).
        self._joining += 1
        self._wanted.set()
        try:
            await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT_S)
        except TimeoutError:
            raise RedisConnectionError("the event feed cannot reach Redis") from None
        finally:
            self._joining -= 1

    def start(self) -> None:
        """Start the reader (the app's lifespan does: a task started inside a request would
        live in that request's context). Subscribers wait until it knows where the feed ends."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="feed-reader")

    async def _read(self) -> None:
        failures = 0
        while not self._stopped():
            try:
                idle = not self._subscribers and not self._joining
                if self._ready.is_set() and idle and not failures:
                    await self._wait_for_a_subscriber()
                    continue
                if not self._ready.is_set():
                    await self._find_the_end()
                    self._ready.set()
                elif failures:
                    await self._after_outage()
                events = await self._reader_log.read_new(self._position, READ_BATCH, READ_BLOCK_MS)
                failures = 0
            except (RedisError, OSError) as exc:
                if self._stopped():
                    return  # close() cut the connection
                wait = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                log.warning("event feed: Redis read failed (%s); retrying in %.1fs", exc, wait)
                await asyncio.sleep(wait)
                continue
            self._hand_out(events)

    async def _wait_for_a_subscriber(self) -> None:
        self._ready.clear()
        self._wanted.clear()
        await self._wanted.wait()

    async def _find_the_end(self) -> None:
        """Where reading starts: the feed's end, unless a subscriber has already joined at the
        reader's position (it subscribed as the reader went waiting): then from there, so that
        it misses nothing."""
        if self._subscribers:
            return
        newest = await self._log.last_id()
        if not self._subscribers:
            self._position = newest

    async def _after_outage(self) -> None:
        """Redis came back: if it lost or trimmed events meanwhile, every subscriber hears so."""
        if await self._log.lost_since(self._position):
            self._hand_out([], Reset("events were lost while the feed was disconnected"))
        newest = await self._log.last_id()
        if id_key(newest) < id_key(self._position):
            # A Redis that restarted empty starts its ids again: follow it from its newest.
            self._hand_out([], Reset("the event store restarted"))
            self._position = newest

    def _hand_out(self, events: list[Event], reset: Reset | None = None) -> None:
        # Synchronous on purpose: a subscriber that joins between two hand-outs reads its
        # history up to exactly self._position, and the reader offers it everything after.
        for subscriber in list(self._subscribers):
            if reset is not None:
                subscriber.offer(reset)
            for event in events:
                if subscriber.wanted.matches(event):
                    subscriber.offer(event)
        if events:
            self._position = events[-1].id

    def _stopped(self) -> bool:
        return self._closing

    async def close(self) -> None:
        """Stop the reader. A cancelled XREAD has been seen to go on until its block ends
        (under asgi-lifespan's runner): closing the reader's connections ends it at once."""
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            done, _ = await asyncio.wait({self._reader}, timeout=0.05)
            if not done:
                await close_redis(self._reader_log.redis)
                await asyncio.wait({self._reader}, timeout=CLOSE_WAIT_S)
            self._reader = None
