"""The live feed over a real socket: Server-Sent Events (ids, resume, filters, heartbeat, reset)
and WS /ws/supervisor, fed by one reader per process, against a real uvicorn and Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import service.feed as feed_module
from db.events import Event, EventLog, FeedLimits
from db.feed_events import MAX_EVENT_BYTES
from db.keys import EVENTS
from devstack.servers import free_port
from service.app import create_app
from service.feed import EventFilter, FeedHub
from service.routes import events as routes
from settings import Settings
from tests.conftest import FEED, make_settings
from tests.factories import packet
from tests.serving import serving

TIMEOUT = 10.0


@asynccontextmanager
async def running(hub: FeedHub) -> AsyncIterator[FeedHub]:
    """The hub's reader started for the block, and closed after it."""
    hub.start()
    try:
        yield hub
    finally:
        await hub.close()


@dataclass
class SseEvent:
    id: str | None = None
    event: str | None = None
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.data))


class SseReader:
    """Parses an event stream as a browser does (WHATWG HTML, server-sent events)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def next(self, with_data: bool = True) -> SseEvent:
        return await asyncio.wait_for(self._next(with_data), TIMEOUT)

    async def _next(self, with_data: bool) -> SseEvent:
        current = SseEvent()
        async for line in self.lines:
            if line == "":
                if current.data or not with_data:
                    return current
                current = SseEvent(comments=current.comments, retry=current.retry)
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                current.comments.append(value)
            elif name == "data":
                current.data += value
            elif name in ("id", "event"):
                setattr(current, name, value)
            elif name == "retry":
                current.retry = int(value)
        raise AssertionError("the stream ended")


@pytest.fixture
def feed_settings(server_urls: tuple[str, str]) -> Settings:
    return make_settings(*server_urls, events_heartbeat_s=0.3, events_progress_interval_s=0)


@pytest.fixture
async def api(feed_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving(create_app(feed_settings)) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client,
    ):
        yield client


@asynccontextmanager
async def feed(
    api: httpx.AsyncClient, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[SseReader]:
    async with api.stream("GET", "/v1/events", params=params, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(response)
        hello = await reader.next(with_data=False)  # sent before any event
        assert hello.retry is not None
        assert "connected" in hello.comments
        yield reader


async def publish(redis: Redis, *call_ids: str, state: str = "COMPLETED") -> None:
    await EventLog(redis, FEED).publish(
        *({"type": "state", "call_id": c, "state": state} for c in call_ids)
    )


async def test_a_streamed_call_reaches_the_feed_with_ids_names_and_json(
    api: httpx.AsyncClient,
) -> None:
    async with feed(api) as events:
        await api.post("/v1/call/stream/c1", json=packet(1))
        await api.post("/v1/call/complete/c1")
        started, completed = await events.next(), await events.next()

    assert (started.event, started.body["state"]) == ("state", "IN_PROGRESS")
    assert (completed.event, completed.body["state"]) == ("state", "COMPLETED")
    assert completed.body["reason"] == "explicit"
    assert started.id == started.body["id"]
    assert completed.id == completed.body["id"]
    assert started.id is not None
    assert completed.id is not None
    assert completed.id > started.id


async def test_a_reconnect_with_last_event_id_loses_and_repeats_nothing(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    async with feed(api) as events:
        await publish(redis, "a", "b", "c")
        seen = [await events.next() for _ in range(2)]
    await publish(redis, "d", "e")  # while nobody listens

    async with feed(api, headers={"Last-Event-ID": str(seen[-1].id)}) as events:
        await publish(redis, "f")
        resumed = [await events.next() for _ in range(4)]
    assert [e.body["call_id"] for e in resumed] == ["c", "d", "e", "f"]

    # The query parameter does the same, for clients that cannot set headers.
    async with feed(api, last_event_id=resumed[1].id) as events:
        assert [(await events.next()).body["call_id"] for _ in range(2)] == ["e", "f"]


async def test_filters_by_call_and_by_state(api: httpx.AsyncClient, redis: Redis) -> None:
    async with (
        feed(api, call_id="mine") as mine,
        feed(api, state=["FAILED", "ARCHIVED"]) as finals,
    ):
        await publish(redis, "other", "mine", state="COMPLETED")
        await publish(redis, "other", state="FAILED")
        await publish(redis, "mine", state="ARCHIVED")
        assert [(await mine.next()).body["state"] for _ in range(2)] == ["COMPLETED", "ARCHIVED"]
        got = [(await finals.next()).body for _ in range(2)]
    assert [(b["call_id"], b["state"]) for b in got] == [("other", "FAILED"), ("mine", "ARCHIVED")]


async def test_a_quiet_feed_sends_heartbeat_comments(api: httpx.AsyncClient) -> None:
    async with feed(api) as events:
        quiet = await events.next(with_data=False)
    assert quiet.comments
    assert quiet.data == ""


async def test_a_resume_point_outside_the_window_starts_with_a_reset(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    await publish(redis, "old")
    (old,) = await EventLog(redis, FEED).after("0-0", 10)
    await publish(redis, "x", "y")
    await redis.xtrim(EVENTS, maxlen=1, approximate=False)  # "old" and "x" are gone

    async with feed(api, headers={"Last-Event-ID": old.id}) as events:
        reset = await events.next()
        after = await events.next()
    assert reset.event == "reset"
    assert reset.body["type"] == "reset"
    assert after.body["call_id"] == "y"


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"last_event_id": "yesterday"}, {}),
        ({}, {"Last-Event-ID": "1-2-3"}),
        ({"state": "DONE"}, {}),
    ],
)
async def test_a_bad_resume_position_or_filter_is_a_clear_422(
    api: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str]
) -> None:
    response = await api.get("/v1/events", params=params, headers=headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"]


async def test_many_subscribers_share_one_redis_reader(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    subscribers = 40
    before = await _xread_calls(redis)
    async with contextlib_stack(feed(api) for _ in range(subscribers)) as readers:
        await publish(redis, *(f"c{n}" for n in range(20)))
        for reader in readers:
            assert [(await reader.next()).body["call_id"] for _ in range(20)] == [
                f"c{n}" for n in range(20)
            ]
    # One reader for the process: a handful of reads, not one per subscriber and event.
    assert await _xread_calls(redis) - before < 40


async def _xread_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xread", {}).get("calls", 0))


@asynccontextmanager
async def contextlib_stack(managers: Any) -> AsyncIterator[list[SseReader]]:
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(m) for m in managers]


async def test_the_websocket_carries_the_same_events_with_filters_and_resume(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    url = str(api.base_url).replace("http", "ws") + "/ws/supervisor"
    async with connect(url + "?call_id=mine") as ws:
        await publish(redis, "other", "mine", "mine")
        first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        second = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert (first["call_id"], first["type"], first["state"]) == ("mine", "state", "COMPLETED")
    assert second["id"] > first["id"]

    async with connect(f"{url}?last_event_id={first['id']}") as ws:
        resumed = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert resumed["id"] == second["id"]


async def test_the_websocket_refuses_a_browser_from_another_origin(
    api: httpx.AsyncClient,
) -> None:
    url = str(api.base_url).replace("http", "ws") + "/ws/supervisor"
    with pytest.raises(InvalidStatus):
        async with connect(url, origin="http://evil.example"):  # type: ignore[arg-type]
            pass


async def test_a_feed_that_cannot_reach_redis_answers_503(server_urls: tuple[str, str]) -> None:
    db_url, _ = server_urls
    settings = make_settings(db_url, f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.2)
    async with (
        serving(create_app(settings)) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=TIMEOUT) as client,
    ):
        response = await client.get("/v1/events")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_subscriber_too_slow_for_its_queue_catches_up_from_redis_in_order(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "QUEUE_SIZE", 5)
    log = EventLog(redis, FEED)
    hub = FeedHub(EventLog(redis, FEED), log)
    async with running(hub):
        async with hub.subscribe(EventFilter()) as batches:
            for n in range(40):  # far more than its queue holds, while it reads nothing
                await log.publish({"type": "state", "call_id": f"c{n}", "state": "ARCHIVED"})
            await asyncio.sleep(0.3)  # the reader has handed them all out by now
            got: list[str] = []
            async for batch in batches:
                got += [item.call_id for item in batch if isinstance(item, Event)]
                if len(got) >= 40:
                    break
        assert got == [f"c{n}" for n in range(40)]
        assert hub.subscribers == 0


class _SlowReads(EventLog):
    """An API process whose reader lags behind the feed."""

    async def read_new(self, after: str, count: int, block_ms: int) -> list[Event]:
        await asyncio.sleep(0.3)
        return await super().read_new(after, count, block_ms)


async def test_a_resume_ahead_of_this_process_s_reader_repeats_nothing(redis: Redis) -> None:
    log = EventLog(redis, FEED)
    lagging = FeedHub(_SlowReads(redis, FEED), log)
    async with running(lagging):
        await lagging.ready()
        await log.publish({"type": "state", "call_id": "x", "state": "ARCHIVED"})
        (seen,) = await log.after("0-0", 10)  # read from another API process
        async with lagging.subscribe(EventFilter(), resume_after=seen.id) as batches:
            await log.publish({"type": "state", "call_id": "y", "state": "ARCHIVED"})
            batch = await asyncio.wait_for(anext(batches), TIMEOUT)
        assert [item.call_id for item in batch if isinstance(item, Event)] == ["y"]


def test_the_api_keeps_the_frames_of_recent_bounded_events_only():
    routes._frame.cache_clear()
    small = Event("1-0", {"type": "state", "call_id": "c1", "state": "ARCHIVED"})
    # An entry no model built (an older release's): sent whole, never kept.
    large = Event("2-0", {"type": "utterance", "call_id": "c1", "text": "x" * MAX_EVENT_BYTES})
    sent = routes._frames([small, large])
    assert b"id: 2-0" in sent
    assert len(sent) > MAX_EVENT_BYTES
    assert routes._frame.cache_info().currsize == 1
    for n in range(routes.FRAME_CACHE_SIZE * 2):
        routes._frames([Event(f"{n + 3}-0", {"type": "state", "call_id": "c", "state": "FAILED"})])
    assert routes._frame.cache_info().currsize == routes.FRAME_CACHE_SIZE


class _CountedReads(EventLog):
    def __init__(self, redis: Redis, limits: FeedLimits) -> None:
        super().__init__(redis, limits)
        self.reads = 0

    async def read_new(self, after: str, count: int, block_ms: int) -> list[Event]:
        self.reads += 1
        return await super().read_new(after, count, block_ms)


async def test_with_no_subscriber_the_reader_reads_nothing_and_a_newcomer_gets_only_new_events(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "READ_BLOCK_MS", 50)
    log, reader = EventLog(redis, FEED), _CountedReads(redis, FEED)
    hub = FeedHub(reader, log)
    async with running(hub):
        await hub.ready()
        await asyncio.sleep(0.2)  # its first read ends: nobody listens
        reads = reader.reads
        for n in range(20):
            await log.publish({"type": "state", "call_id": f"old{n}", "state": "ARCHIVED"})
        await asyncio.sleep(0.3)
        assert reader.reads == reads  # events came, nobody listened: no read
        async with hub.subscribe(EventFilter()) as batches:
            await log.publish({"type": "state", "call_id": "new", "state": "ARCHIVED"})
            batch = await asyncio.wait_for(anext(batches), TIMEOUT)
        assert [item.call_id for item in batch if isinstance(item, Event)] == ["new"]


async def test_a_subscriber_that_joins_as_the_reader_goes_waiting_misses_nothing(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reader goes waiting with the subscriber past ready() but not yet registered: it
    # joins at the reader's last position, and the reader reads on from there.
    monkeypatch.setattr(feed_module, "READ_BLOCK_MS", 50)
    log = EventLog(redis, FEED)
    hub = FeedHub(EventLog(redis, FEED), log)
    async with running(hub):
        await hub.ready()
        ready = hub.ready

        async def ready_then_reader_waits() -> None:
            await ready()
            for _ in range(50):  # until the reader has gone waiting
                if not hub._ready.is_set():
                    break
                await asyncio.sleep(0.01)
            assert not hub._ready.is_set()
            # Published while the reader waits: after the position the subscriber joins at.
            await log.publish({"type": "state", "call_id": "meanwhile", "state": "ARCHIVED"})

        monkeypatch.setattr(hub, "ready", ready_then_reader_waits)
        async with hub.subscribe(EventFilter()) as batches:
            batch = await asyncio.wait_for(anext(batches), TIMEOUT)
        assert [item.call_id for item in batch if isinstance(item, Event)] == ["meanwhile"]


class _GatedReads(EventLog):
    """A reader whose blocking read ends when the test opens the gate (once per opening)."""

    def __init__(self, redis: Redis, limits: FeedLimits) -> None:
        super().__init__(redis, limits)
        self.gate = asyncio.Event()

    async def read_new(self, after: str, count: int, block_ms: int) -> list[Event]:
        await self.gate.wait()
        self.gate.clear()
        return []


async def test_a_newcomer_is_ready_when_the_reader_s_read_ends_in_the_same_turn(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The newcomer asks for the reader (ready()) and, in the same turn of the loop, the
    # reader's blocking read ends with nobody subscribed: the reader must not go waiting and
    # leave the newcomer waiting for a reader that waits for it (a 503 after 3 s; seen in CI).
    monkeypatch.setattr(feed_module, "READY_TIMEOUT_S", 0.5)
    reader = _GatedReads(redis, FEED)
    hub = FeedHub(reader, EventLog(redis, FEED))
    async with running(hub):
        await hub.ready()  # the reader knows the end, and blocks in its read
        newcomer = asyncio.create_task(hub.ready())
        reader.gate.set()  # the read ends in the newcomer's turn, after it
        await asyncio.wait_for(newcomer, TIMEOUT)
