"""The real-calls benchmark's client: two-track calls over the media WebSocket at real-time pace
(or as fast as the socket takes), the wait for ARCHIVED, and what a call leaves in Redis and in
its recording.
"""

from __future__ import annotations

import asyncio
import struct
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.real_calls_frames import FRAME_BYTES, TRACKS, TwoTrackCall
from core.audio import TELEPHONY, decode

HOST = "127.0.0.1"
TICK_S = 0.020
ARCHIVED = "ARCHIVED"
FINAL = frozenset({"ARCHIVED", "FAILED"})


@dataclass
class CallRun:
    """What the client did and saw of one call."""

    call: TwoTrackCall
    # Per tick, when both its frames were handed to the socket: the wall clock (time.time()),
    # so that Redis' TIME (the moment it counted) can be set against it.
    sent_at: array[float] = field(default_factory=lambda: array("d"))
    slip_ms: array[float] = field(default_factory=lambda: array("f"))  # per tick, behind pace
    started_at: float = 0.0
    stop_at: float | None = None
    closed_at: float | None = None  # the server closes once it has handled the stop
    final_at: float | None = None
    state: str | None = None
    close_code: int | None = None
    errors: list[str] = field(default_factory=list)
    received: dict[str, int] = field(default_factory=dict)  # per track (or "both")
    redis_end: dict[str, Any] = field(default_factory=dict)  # just before stop

    @property
    def call_id(self) -> str:
        return self.call.call_id

    @property
    def to_final_s(self) -> float | None:
        if self.stop_at is None or self.final_at is None:
            return None
        return self.final_at - self.stop_at

    @property
    def lost(self) -> int:
        """Frames sent that the final status does not count."""
        sent = len(self.sent_at)
        if "both" in self.received:
            return 2 * sent - self.received["both"]
        return sum(sent - self.received.get(track, 0) for track in TRACKS)


Hook = Callable[[CallRun], Awaitable[None]]


def stored_ticks(status: dict[str, Any]) -> int:
    """Ticks whose frames the status counts, on both tracks."""
    tracks = status.get("tracks")
    if isinstance(tracks, dict) and tracks:
        return min(int((tracks.get(t) or {}).get("packets_received", 0)) for t in TRACKS)
    return int(status.get("packets_received", 0)) // 2


def received_of(status: dict[str, Any]) -> dict[str, int]:
    tracks = status.get("tracks")
    if isinstance(tracks, dict) and tracks:
        return {t: int((tracks.get(t) or {}).get("packets_received", 0)) for t in TRACKS}
    return {"both": int(status.get("packets_received", 0))}


async def run_call(
    port: int,
    http: httpx.AsyncClient,
    run: CallRun,
    *,
    paced: bool,
    live: dict[str, CallRun],
    before_stop: Hook | None = None,
    final_cap_s: float = 180.0,
) -> CallRun:
    """One call from connect to ARCHIVED (or FAILED, or `final_cap_s` after its stop)."""
    call = run.call
    try:
        async with connect(
            f"ws://{HOST}:{port}/v1/call/media", compression=None, ping_interval=None
        ) as ws:
            await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
            await ws.send(call.start())
            live[call.call_id] = run
            await _send_media(ws, run, paced)
            live.pop(call.call_id, None)
            if before_stop is not None:
                await before_stop(run)
            await ws.send(call.stop())
            run.stop_at = time.perf_counter()
            final = asyncio.create_task(wait_final(http, run, final_cap_s))
            run.close_code = await _until_closed(ws, run)
            run.closed_at = time.perf_counter()
            await final
    except (OSError, ConnectionClosed) as exc:
        live.pop(call.call_id, None)
        run.errors.append(f"{type(exc).__name__}: {exc}")
    return run


async def _send_media(ws: Any, run: CallRun, paced: bool) -> None:
    call, sent_at, slip = run.call, run.sent_at, run.slip_ms
    run.started_at = t0 = time.perf_counter()
    for tick in range(call.ticks):
        if paced:
            due = t0 + tick * TICK_S
            now = time.perf_counter()
            if now < due:
                await asyncio.sleep(due - now)
                now = time.perf_counter()
            slip.append(1000 * (now - due))
        inbound, outbound = call.media(tick)
        await ws.send(inbound)
        await ws.send(outbound)
        sent_at.append(time.time())


async def _until_closed(ws: Any, run: CallRun) -> int | None:
    try:
        while True:
            message = await ws.recv()  # error frames only: the server closes after stop
            run.errors.append(str(message)[:200])
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


async def read_status(http: httpx.AsyncClient, call_id: str) -> dict[str, Any] | None:
    answer = await http.get(f"/v1/calls/{call_id}")
    return orjson.loads(answer.content) if answer.status_code == 200 else None


async def wait_final(http: httpx.AsyncClient, run: CallRun, cap_s: float) -> None:
    """From the stop on, long-polls the status until ARCHIVED or FAILED: each GET ?wait=5 names
    the ETag of the answer before it (If-None-Match), so a change between two polls is seen."""
    deadline = time.perf_counter() + cap_s
    status: dict[str, Any] | None = None
    etag: str | None = None
    while time.perf_counter() < deadline:
        headers = {"If-None-Match": etag} if etag else {}
        params = {"wait": 5} if etag else {}
        try:
            answer = await http.get(f"/v1/calls/{run.call_id}", params=params, headers=headers)
        except httpx.HTTPError as exc:
            run.errors.append(f"status: {type(exc).__name__}")
            await asyncio.sleep(0.1)
            continue
        if answer.status_code == 304:
            continue
        if answer.status_code != 200:
            await asyncio.sleep(0.05)
            continue
        etag = answer.headers.get("etag")
        status = orjson.loads(answer.content)
        if status.get("state") in FINAL:
            run.final_at = time.perf_counter()
            break
        if etag is None:  # no ETag: poll
            await asyncio.sleep(0.05)
    if status is not None:
        run.state = status.get("state")
        run.received = received_of(status)


async def call_key_bytes(redis: Redis, call_id: str) -> dict[str, dict[str, int]]:
    """Every Redis key of the call (SCAN MATCH *:call:<id>:*), by the name after the call id:
    its bytes (MEMORY USAGE, every element counted), its entries if a stream, its TTL."""
    keys = [k async for k in redis.scan_iter(match=f"*:call:{call_id}:*", count=1000)]
    if not keys:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
            pipe.type(key)
            pipe.ttl(key)
        answers = await pipe.execute()
    found: dict[str, dict[str, int]] = {}
    streams = []
    for i, key in enumerate(keys):
        name = key.decode().split(f":call:{call_id}:", 1)[1]
        size, kind, ttl = answers[3 * i : 3 * i + 3]
        found[name] = {"bytes": int(size or 0), "ttl_s": int(ttl)}
        if kind in (b"stream", "stream"):
            streams.append((name, key))
    for name, key in streams:
        found[name]["entries"] = int(await redis.xlen(key))
    return found


def summed(keys: dict[str, dict[str, int]]) -> int:
    return sum(k["bytes"] for k in keys.values())


def packet_entries(keys: dict[str, dict[str, int]]) -> int:
    """Entries of the call's packets stream (0 when it is gone)."""
    return sum(k.get("entries", 0) for name, k in keys.items() if name.endswith("packets"))


async def check_audio(http: httpx.AsyncClient, run: CallRun) -> dict[str, Any]:
    """The recording (GET /v1/calls/{id}/audio) against what each track sent: its length, and
    whether each track's audio is its channel, sample for sample."""
    answer = await http.get(f"/v1/calls/{run.call_id}/audio")
    if answer.status_code != 200:
        return {"status": answer.status_code}
    body = answer.content
    try:
        channels, rate, bits, pcm = _wav(body)
    except ValueError as exc:
        return {"status": 200, "error": str(exc)}
    frames = len(pcm) // (channels * bits // 8)
    expected = len(run.sent_at) * FRAME_BYTES
    out: dict[str, Any] = {
        "status": 200, "channels": channels, "rate": rate, "bits": bits,
        "samples": frames, "expected_samples": expected, "length_ok": frames == expected,
    }  # fmt: skip
    if bits == 16 and channels in (1, 2):
        wav = np.frombuffer(pcm[: frames * channels * 2], dtype="<i2").reshape(-1, channels)
        sent = [decode(run.call.track_audio(t)[:expected], TELEPHONY) for t in (0, 1)]
        # The documented order (core/recording.py): channel 0 inbound, channel 1 outbound.
        out["tracks_match"] = [
            channels > t and len(wav) == len(sent[t]) and bool(np.array_equal(wav[:, t], sent[t]))
            for t in (0, 1)
        ]
    return out


def _wav(body: bytes) -> tuple[int, int, int, bytes]:
    """channels, rate, bits and the PCM of a RIFF/WAVE body (its chunks walked, not assumed)."""
    if body[:4] != b"RIFF" or body[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE body")
    at, fmt = 12, None
    while at + 8 <= len(body):
        kind, size = body[at : at + 4], struct.unpack_from("<I", body, at + 4)[0]
        if kind == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body, at + 8)
            fmt = (channels, rate, bits)
        if kind == b"data" and fmt is not None:
            end = len(body) if size in (0, 0xFFFFFFFF) else at + 8 + size
            return (*fmt, body[at + 8 : end])
        at += 8 + size + (size & 1)
    raise ValueError("no fmt and data chunks")
