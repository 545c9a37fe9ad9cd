"""Concurrent Twilio-format media streams over WebSockets (the `websockets` client library)."""

from __future__ import annotations

import asyncio
import random
import time

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.load import HOST, call_sequences, payload


def stream_frames(call_id: str, packets: int, rng: random.Random, data: list[str]) -> list[str]:
    start = {
        "event": "start",
        "sequenceNumber": "0",
        "streamSid": f"MZ{call_id}",
        "start": {"callSid": call_id, "streamSid": f"MZ{call_id}", "customParameters": {}},
    }
    frames = [orjson.dumps({"event": "connected", "protocol": "Call"}).decode()]
    frames.append(orjson.dumps(start).decode())
    for s in call_sequences(packets, rng):
        media = {
            "event": "media",
            "sequenceNumber": str(s + 1),
            "streamSid": f"MZ{call_id}",
            "media": {
                "track": "inbound",
                "chunk": str(s + 1),
                "timestamp": str(s * 20),
                "payload": data[s % len(data)],
            },
        }
        frames.append(orjson.dumps(media).decode())
    frames.append(orjson.dumps({"event": "stop", "streamSid": f"MZ{call_id}"}).decode())
    return frames


async def _one(port: int, frames: list[str]) -> int | None:
    async with connect(f"ws://{HOST}:{port}/v1/call/media", compression=None) as ws:
        for frame in frames:
            await ws.send(frame)
        try:
            while True:
                await ws.recv()  # error frames only; the server closes after stop
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


async def ws_streams(
    port: int, prefix: str, streams: int, packets: int
) -> tuple[int, float, list[int | None]]:
    """Run `streams` streams at once; returns (media frames sent, seconds, close codes).
    A stream's close comes after its stop was handled, so every packet is in Redis by then."""
    rng = random.Random(3)
    data = [payload(rng) for _ in range(64)]
    all_frames = [stream_frames(f"{prefix}-{i}", packets, rng, data) for i in range(streams)]
    media = sum(len(f) - 3 for f in all_frames)
    t0 = time.perf_counter()
    codes = await asyncio.gather(*(_one(port, f) for f in all_frames))
    return media, time.perf_counter() - t0, list(codes)
