"""WebSocket ingestion in the Twilio Media Streams format, against a real uvicorn, Redis and PG."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core.ingestion import Ingestion
from db.keys import call_keys
from devstack.servers import free_port
from jobs.process import process_call
from jobs.resources import WorkerResources
from service import streaming
from service.app import create_app
from service.routes import media_ws
from settings import Settings
from tests.batches import script_batches
from tests.conftest import make_settings
from tests.factories import send
from tests.serving import serving


async def serve(settings: Settings) -> AsyncIterator[str]:
    async with serving(create_app(settings)) as address:
        yield address


@pytest.fixture
async def base(settings: Settings) -> AsyncIterator[str]:
    async for address in serve(settings):
        yield address


def start(call_id: str) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": "MZ1",
            "start": {
                "callSid": call_id,
                "streamSid": "MZ1",
                "tracks": ["inbound"],
                "customParameters": {"campaign": "test"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def media(sequence: int | str, payload: str | None = None, timestamp: str | None = None) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence),
            "streamSid": "MZ1",
            "media": {
                "track": "inbound",
                "chunk": str(sequence),
                "timestamp": str(int(sequence) * 20) if timestamp is None else timestamp,
                "payload": base64.b64encode(f"audio-{sequence}".encode()).decode()
                if payload is None
                else payload,
            },
        }
    )


STOP = json.dumps({"event": "stop", "sequenceNumber": "99", "streamSid": "MZ1", "stop": {}})
CONNECTED = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


async def closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame the server sends until it closes, and the close code."""
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(10):
            while True:
                frames.append(json.loads(await ws.recv()))
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code if exc.rcvd else None


async def stream(base: str, frames: list[str]) -> tuple[list[dict[str, Any]], int | None]:
    async with connect(f"ws://{base}/v1/call/media") as ws:
        for frame in frames:
            await ws.send(frame)
        return await closed(ws)


async def call_status(base: str, call_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://{base}") as http:
        response = await http.get(f"/v1/calls/{call_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def stored(redis: Redis, call_id: str) -> list[tuple[int, float, str]]:
    entries = await redis.xrange(call_keys(call_id).packets)
    return [(int(f[b"s"]), float(f[b"t"]), f[b"d"].decode()) for _, f in entries]


async def test_full_stream_stores_packets_and_completes_the_call(base: str, redis: Redis):
    frames, code = await stream(
        base, [CONNECTED, start("CA1"), *(media(s) for s in range(2, 122)), STOP]
    )

    assert (frames, code) == ([], 1000)
    packets = await stored(redis, "CA1")
    assert [p[0] for p in packets] == list(range(2, 122))
    assert packets[0] == (2, 0.04, base64.b64encode(b"audio-2").decode())
    status = await call_status(base, "CA1")
    assert status["state"] == "COMPLETED"
    assert status["completion_reason"] == "explicit"
    assert status["packets_received"] == 120
    assert status["metadata"]["customParameters"] == {"campaign": "test"}
    assert status["metadata"]["mediaFormat"]["sampleRate"] == 8000
    assert await redis.zcard("arq:queue") == 1


async def test_start_metadata_is_kept_in_postgresql_after_the_flush(
    base: str, worker_resources: WorkerResources, engine: AsyncEngine
):
    await stream(base, [start("CA-META"), media(1), STOP])

    await process_call(worker_resources, "CA-META")

    status = await call_status(base, "CA-META")
    assert status["state"] == "ARCHIVED"
    assert status["metadata"]["streamSid"] == "MZ1"
    async with engine.connect() as conn:
        stored_meta = await conn.scalar(
            text("SELECT start_metadata->>'callSid' FROM call WHERE call_id = 'CA-META'")
        )
    assert stored_meta == "CA-META"


async def test_an_oversized_start_message_is_refused(base: str, redis: Redis):
    big = json.loads(start("CA-BIG"))
    big["start"]["customParameters"] = {"blob": "x" * 20_000}

    frames, code = await stream(base, [json.dumps(big), media(1)])

    assert frames[0]["code"] == "metadata_too_large"
    assert code == 1008
    assert await redis.dbsize() == 0


async def test_duplicates_and_reordering_are_counted(base: str, redis: Redis):
    sequences = [2, 3, 4, 4, 6, 5, 7, 3]
    frames, code = await stream(base, [start("CA2"), *(media(s) for s in sequences), STOP])

    assert (frames, code) == ([], 1000)
    assert [p[0] for p in await stored(redis, "CA2")] == [2, 3, 4, 6, 5, 7]
    status = await call_status(base, "CA2")
    assert status["packets_received"] == 6
    assert status["duplicate_packets"] == 2
    assert status["out_of_order_packets"] == 1
    assert status["missing_count"] == 0


@pytest.mark.parametrize(
    ("bad", "code", "close_code"),
    [
        ("{not json", "invalid_json", 1003),
        (json.dumps({"event": "dance"}), "unknown_event", 1003),
        (json.dumps(["media"]), "invalid_frame", 1003),
        (media("x7", timestamp="100"), "invalid_sequence", 1003),
        (media(-1), "invalid_sequence", 1003),
        (media(5, timestamp="soon"), "invalid_timestamp", 1003),
        (media(5, payload="not base64!"), "invalid_payload", 1003),
        (media(5, payload="A" * (64 * 1024 + 4)), "payload_too_large", 1008),
        (json.dumps({"event": "media", "sequenceNumber": "5"}), "invalid_media", 1003),
        (start("CA9"), "already_started", 1008),
    ],
)
async def test_bad_frame_gets_an_error_and_a_close_and_nothing_of_it_is_stored(
    base: str, redis: Redis, bad: str, code: str, close_code: int
):
    frames, got_code = await stream(
        base, [start("CA3"), media(2), media(3), media(4), bad, media(6), STOP]
    )

    assert got_code == close_code
    assert len(frames) == 1
    assert frames[0]["event"] == "error"
    assert frames[0]["code"] == code
    assert frames[0]["message"]
    # The valid packets before the bad frame are kept; the bad one and everything after are not.
    assert [p[0] for p in await stored(redis, "CA3")] == [2, 3, 4]
    assert (await call_status(base, "CA3"))["state"] == "IN_PROGRESS"


async def test_media_before_start_is_a_policy_violation(base: str, redis: Redis):
    frames, code = await stream(base, [CONNECTED, media(2)])

    assert code == 1008
    assert [f["code"] for f in frames] == ["not_started"]
    assert await redis.dbsize() == 0


@pytest.mark.parametrize("call_id", ["bad id/with slash", "CA1\n"])
async def test_invalid_call_id_is_refused(base: str, redis: Redis, call_id: str):
    frames, code = await stream(base, [start(call_id), media(2)])

    assert code == 1008
    assert [f["code"] for f in frames] == ["invalid_call_id"]
    assert await redis.dbsize() == 0


async def test_media_for_a_completed_call_gets_call_completed(base: str, redis: Redis):
    assert (await stream(base, [start("CA4"), media(2), STOP]))[1] == 1000

    frames, code = await stream(base, [start("CA4"), media(3), media(4)])

    assert code == 1008
    assert [f["code"] for f in frames] == ["call_completed"]
    assert [p[0] for p in await stored(redis, "CA4")] == [2]


async def test_disconnect_flushes_what_was_received(base: str, redis: Redis):
    async with connect(f"ws://{base}/v1/call/media") as ws:
        await ws.send(start("CA5"))
        for s in range(2, 12):
            await ws.send(media(s))
    for _ in range(200):
        if await redis.xlen(call_keys("CA5").packets) == 10:
            break
        await asyncio.sleep(0.01)
    assert [p[0] for p in await stored(redis, "CA5")] == list(range(2, 12))
    assert (await call_status(base, "CA5"))["state"] == "IN_PROGRESS"


async def test_redis_unavailable_closes_with_1013_try_again_without_claiming_frames_were_lost(
    server_urls: tuple[str, str],
):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    async for base in serve(make_settings(server_urls[0], dead_redis, redis_timeout_s=0.2)):
        frames, code = await stream(base, [start("CA6"), media(2)])

        assert code == 1013
        assert [f["code"] for f in frames] == ["redis_unavailable"]
        assert "not stored" not in frames[0]["message"]
        assert "may not have been stored" in frames[0]["message"]


# Nothing taken in is dropped: frames the socket holds (HOLD_S) when the call is completed, or
# ahead of a refused frame, are stored; a refusal names what it refuses and only that.

LONG_HOLD_S = 30.0  # frames stay held until something stores them: no race with the hold


@pytest.fixture
def media_taken(monkeypatch: pytest.MonkeyPatch) -> dict[str, asyncio.Event]:
    """Events set once the server's stream of a call has taken in its Nth media frame (key
    "call:N"), observed in the server's own process; and a long hold."""
    monkeypatch.setattr(media_ws, "store_at", lambda held_since: held_since + LONG_HOLD_S)
    taken: dict[str, asyncio.Event] = {}
    counts: dict[str, int] = {}
    hold = media_ws.MediaStream.hold

    def counting(self: media_ws.MediaStream, packet: Any) -> None:
        # Whichever way the frame came: the protocol's sink or the stream's own receive.
        hold(self, packet)
        assert self.call_id is not None
        counts[self.call_id] = counts.get(self.call_id, 0) + 1
        taken.setdefault(f"{self.call_id}:{counts[self.call_id]}", asyncio.Event()).set()

    monkeypatch.setattr(media_ws.MediaStream, "hold", counting)
    return taken


async def until_taken(taken: dict[str, asyncio.Event], call_id: str, count: int) -> None:
    event = taken.setdefault(f"{call_id}:{count}", asyncio.Event())
    await asyncio.wait_for(event.wait(), 10)


async def test_frames_taken_in_before_an_http_completion_are_stored_with_the_call(
    base: str, redis: Redis, media_taken: dict[str, asyncio.Event]
):
    async with connect(f"ws://{base}/v1/call/media") as ws:
        await ws.send(start("CA-HOLD"))
        for sequence in range(1, 7):
            await ws.send(media(sequence))
        await until_taken(media_taken, "CA-HOLD", 6)
        async with httpx.AsyncClient(base_url=f"http://{base}") as http:
            completed = await http.post("/v1/call/complete/CA-HOLD")
        assert completed.status_code == 202
        # Frames after the completion are refused, and only they.
        await ws.send(media(7))
        await ws.send(STOP)  # stores what is held: frame 7
        frames, code = await closed(ws)

    assert [p[0] for p in await stored(redis, "CA-HOLD")] == [1, 2, 3, 4, 5, 6]
    status = await call_status(base, "CA-HOLD")
    assert (status["state"], status["packets_received"]) == ("COMPLETED", 6)
    assert (code, [f["code"] for f in frames]) == (1008, ["call_completed"])
    assert "sequence 7" in frames[0]["message"]


async def test_a_refusal_past_the_calls_cap_stores_the_frames_before_it(
    server_urls: tuple[str, str], redis: Redis, media_taken: dict[str, asyncio.Event]
):
    capped = make_settings(*server_urls, max_call_packets=4)
    async for base in serve(capped):
        async with connect(f"ws://{base}/v1/call/media") as ws:
            await ws.send(start("CA-CAP"))
            for sequence in range(1, 7):
                await ws.send(media(sequence))
            await until_taken(media_taken, "CA-CAP", 6)
            await ws.send(STOP)  # stores the six held frames in one go: past the cap
            frames, code = await closed(ws)

        assert [p[0] for p in await stored(redis, "CA-CAP")] == [1, 2, 3, 4]
        assert (code, [f["code"] for f in frames]) == (1008, ["call_too_large"])
        assert "sequence 5" in frames[0]["message"]
        assert (await call_status(base, "CA-CAP"))["state"] == "IN_PROGRESS"


async def test_a_retryable_refusal_closes_1013_try_again_later(
    server_urls: tuple[str, str], client: httpx.AsyncClient, redis: Redis
):
    for call_id in ("a", "b"):  # two completed calls wait for the worker: past a limit of one
        await send(client, call_id, 0)
        assert (await client.post(f"/v1/call/complete/{call_id}")).status_code == 202
    full = make_settings(*server_urls, backlog_limit=1)
    async for base in serve(full):
        frames, code = await stream(base, [start("CA-FULL"), media(1), media(2)])

    assert code == 1013
    assert [f["code"] for f in frames] == ["backlog_full"]
    assert "Retry-After" in frames[0]["message"] or "retry" in frames[0]["message"]
    assert not await redis.exists(call_keys("CA-FULL").packets)


@pytest.mark.parametrize("call_id", [".", "..", "..."])
async def test_a_call_id_of_dots_only_is_refused_invalid_call_id(
    base: str, redis: Redis, call_id: str
):
    frames, code = await stream(base, [start(call_id), media(2)])

    assert code == 1008
    assert [f["code"] for f in frames] == ["invalid_call_id"]
    assert await redis.dbsize() == 0


async def test_an_internal_error_closes_1011_saying_only_that_it_is_logged(
    base: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    async def broken(*_: object) -> None:
        raise RuntimeError("a bug with secret details")

    monkeypatch.setattr(Ingestion, "open_call", broken)

    frames, code = await stream(base, [start("CA-BUG"), media(1)])

    assert code == 1011
    assert [f["code"] for f in frames] == ["internal_error"]
    assert "secret" not in frames[0]["message"]
    assert "a bug with secret details" in caplog.text  # logged, with its traceback


async def until_stored(redis: Redis, calls: list[str], count: int, poll_s: float) -> None:
    """Until each call's stream holds `count` packets (10 s at most)."""
    async with asyncio.timeout(10):
        for _ in range(int(10 / poll_s) + 1):
            if [await redis.xlen(call_keys(c).packets) for c in calls] == [count] * len(calls):
                return
            await asyncio.sleep(poll_s)


async def test_the_streams_of_a_process_store_their_held_frames_in_one_round_trip(
    base: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    """Each stream's held frames are stored when the window of the process' clock they arrived
    in ends (streaming.store_at), the same moment for every stream: their script calls go to
    Redis together (db/pipelining.py), not one round trip a call. A store first reads what its
    socket holds (caught_up), and a socket whose frames came in a read of their own may be
    read a tick apart from the others (one or two batches here, never one a stream)."""
    # The backlog kept fresh (the warm packet below alone would not keep it so: the streams'
    # starts and the window take more than its second).
    batches = script_batches(monkeypatch)
    # A packet first: the backlog's size is read (core/backlog.py), so no store waits on it.
    async with httpx.AsyncClient(base_url=f"http://{base}") as http:
        warm = await http.post(
            "/v1/call/stream/CA-WARM", json={"sequence": 1, "data": "x", "timestamp": 1.0}
        )
    assert warm.status_code == 202
    calls = [f"CA-TICK-{i}" for i in range(4)]
    sockets = [await connect(f"ws://{base}/v1/call/media") for _ in calls]
    try:
        # The streams started first (their handshakes and starts take the loaded machine's
        # time), then one window for every stream's frames, which reach the server in far less.
        for ws, call_id in zip(sockets, calls, strict=True):
            await ws.send(start(call_id))
        for _ in range(1000):  # opened (their start handled), within 10 s
            if all([await redis.exists(call_keys(c).metadata) for c in calls]):
                break
            await asyncio.sleep(0.01)
        window_ends = asyncio.get_running_loop().time() + 1.0
        monkeypatch.setattr(media_ws, "store_at", lambda held_since: window_ends)
        batches.clear()
        for ws in sockets:
            await ws.send(media(1))
            await ws.send(media(2))
        await until_stored(redis, calls, 2, poll_s=0.05)
    finally:
        for ws in sockets:
            await ws.close()
    assert sum(batches) == 4  # nothing stored twice
    assert len(batches) < len(calls)
    assert max(batches) >= 2


async def test_held_frames_wait_no_longer_than_the_window_they_arrived_in(base: str, redis: Redis):
    async with connect(f"ws://{base}/v1/call/media") as ws:
        await ws.send(start("CA-WINDOW"))
        await ws.send(media(1))
        sent = asyncio.get_running_loop().time()
        await until_stored(redis, ["CA-WINDOW"], 1, poll_s=0.005)
        waited = asyncio.get_running_loop().time() - sent
    # At most HOLD_S, and the round trips around it; no idle timeout, no next frame needed.
    assert waited < streaming.HOLD_S + 0.5


# The socket is a bare ASGI endpoint (media_ws.MediaSocket): what Starlette's WebSocket did for
# it (the handshake's order, the origin check's refusal, text against binary) is its own.


async def test_a_browser_from_an_origin_not_allowed_is_refused_at_the_handshake_403(
    base: str, redis: Redis
):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{base}/v1/call/media", origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    assert await redis.exists(call_keys("CA-ORIGIN").meta) == 0


async def test_a_program_without_origin_is_accepted_and_its_stop_closes_1000(base: str):
    frames, code = await stream(base, [CONNECTED, start("CA-NOORIGIN"), media(2), STOP])
    assert (frames, code) == ([], 1000)


async def test_frames_behind_a_slow_store_wait_in_the_socket_and_are_stored_in_order(
    base: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    """No read-ahead: while a store is in flight nothing reads the socket; what the client
    sent meanwhile is taken after it, in order, and nothing is lost."""
    append = Ingestion.append

    async def slow(self: Ingestion, call_id: str, packets: Any) -> Any:
        await asyncio.sleep(0.2)
        return await append(self, call_id, packets)

    monkeypatch.setattr(Ingestion, "append", slow)
    frames, code = await stream(
        base, [CONNECTED, start("CA-SLOW"), *(media(s) for s in range(2, 302)), STOP]
    )
    assert (frames, code) == ([], 1000)
    assert [p[0] for p in await stored(redis, "CA-SLOW")] == list(range(2, 302))


MARK = json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": "greeting"}})


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_media_frames_are_taken_as_they_are_read_and_keep_their_order_around_other_events(
    base: str, redis: Redis, monkeypatch: pytest.MonkeyPatch, compression: str | None
):
    """Under the production protocol (service/ws_protocol.py), a media frame of a started
    stream is taken by the stream's sink as it is read, without waking the stream's task; an
    event between media frames goes through the task, and the frames after it wait behind it.
    With permessage-deflate websockets parses the frames; without it, the protocol itself."""
    took: list[bool] = []
    take_text = media_ws.MediaStream.take_text

    def spy(self: media_ws.MediaStream, text: str) -> bool:
        took.append(take_text(self, text))
        return took[-1]

    monkeypatch.setattr(media_ws.MediaStream, "take_text", spy)
    async with connect(f"ws://{base}/v1/call/media", compression=compression) as ws:
        await ws.send(start("CA-SINK"))
        await asyncio.sleep(0.2)  # started: the sink is open
        for sequence in range(1, 21):
            await ws.send(media(sequence))
            if sequence == 10:
                await ws.send(MARK)
            await asyncio.sleep(0.005)
        await ws.send(STOP)
        frames, code = await closed(ws)

    assert (frames, code) == ([], 1000)
    assert [p[0] for p in await stored(redis, "CA-SINK")] == list(range(1, 21))
    status = await call_status(base, "CA-SINK")
    assert (status["packets_received"], status["out_of_order_packets"]) == (20, 0)
    assert True in took  # frames were sunk
    assert took.count(False) <= 2  # the mark and the stop, declined to the task


async def test_a_bad_frame_after_sunk_frames_stores_those_before_it_and_nothing_after(
    base: str, redis: Redis
):
    async with connect(f"ws://{base}/v1/call/media") as ws:
        await ws.send(start("CA-SINKBAD"))
        await asyncio.sleep(0.2)
        for sequence in range(1, 6):
            await ws.send(media(sequence))
            await asyncio.sleep(0.005)
        await ws.send(media(6, payload="not base64!"))
        for sequence in range(7, 10):
            await ws.send(media(sequence))
        frames, code = await closed(ws)

    assert (code, [f["code"] for f in frames]) == (1003, ["invalid_payload"])
    assert [p[0] for p in await stored(redis, "CA-SINKBAD")] == [1, 2, 3, 4, 5]


async def test_frames_waiting_in_a_held_socket_are_read_and_stored_before_an_http_completion(
    base: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    """After a read its sink took frames in, the socket is not read again until the stream's
    store (service/ws_protocol.py): frames sent meanwhile wait in the kernel. A completion
    reads them first, so that they are stored with the call, not refused as coming after it."""
    monkeypatch.setattr(media_ws, "store_at", lambda held_since: held_since + LONG_HOLD_S)
    monkeypatch.setattr(media_ws, "HOLD_S", LONG_HOLD_S)  # the reading held for as long
    async with connect(f"ws://{base}/v1/call/media", compression=None) as ws:
        await ws.send(start("CA-HELD"))
        await asyncio.sleep(0.2)  # started: the sink is open
        await ws.send(media(1))
        await asyncio.sleep(0.2)  # read: the socket's reading is held now
        for sequence in range(2, 6):
            await ws.send(media(sequence))
        await asyncio.sleep(0.2)  # in the server's socket, not read
        async with httpx.AsyncClient(base_url=f"http://{base}") as http:
            completed = await http.post("/v1/call/complete/CA-HELD")
            assert completed.status_code == 202
            assert [p[0] for p in await stored(redis, "CA-HELD")] == [1, 2, 3, 4, 5]
            status = (await http.get("/v1/calls/CA-HELD")).json()
        assert (status["state"], status["packets_received"]) == ("COMPLETED", 5)
        ws.transport.abort()  # its reading is held for LONG_HOLD_S: no closing handshake
