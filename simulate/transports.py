"""Sending a planned call to Callstream, as a PBX would: HTTP packets (one per request, or in
batches) then POST complete, or the Twilio Media Streams WebSocket (connected, start, media...,
stop). Both pace the frames by the schedule and report what happened; a refused key stops the
whole run (`AccessRefused`), anything else fails only the call it happened to.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from simulate.plan import FRAME_S, CallPlan, Delivery

OnSent = Callable[[int], None]  # told how many deliveries just went out
BUSY_RETRIES = 5  # 429 and 503 answers are waited out (Retry-After) this many times per request
MAX_RETRY_AFTER_S = 5.0
WS_CLOSE_WAIT_S = 10.0  # after stop, how long the server may take to close the socket
STREAM_SID_PREFIX = "MZsim"


class AccessRefused(RuntimeError):
    """The server refused the key (401/403): no call can succeed, so the run stops."""


@dataclass
class Sent:
    """What sending one call did."""

    requests: int = 0
    deliveries: int = 0
    last_packet_at: float | None = None  # epoch seconds of the last delivery that went out
    completed: bool = False  # the server took the end of the call (complete or stop)
    error: str | None = None
    retries: int = 0  # requests repeated after a 429 or 503


@dataclass(frozen=True)
class Pace:
    """How fast audio is sent: `speed` seconds of audio a second (None: as fast as possible)."""

    speed: float | None

    async def wait_for(self, started: float, due_s: float) -> None:
        if self.speed is None:
            return
        delay = started + due_s / self.speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def problem(response: httpx.Response) -> str:
    """The answer's status and what its problem details say."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        return f"{response.status_code} {body.get('code', '')}: {body['detail']}".strip()
    return f"{response.status_code} {response.reason_phrase}"


def check_access(response: httpx.Response, what: str) -> None:
    if response.status_code in (401, 403):
        raise AccessRefused(f"{what} was refused: {problem(response)}")


async def send_http(
    client: httpx.AsyncClient, plan: CallPlan, pace: Pace, batch: int, on_sent: OnSent
) -> Sent:
    """The call's packets over HTTP (one request per `batch` deliveries), then complete."""
    sent = Sent()
    frames = plan.frames()
    started = time.monotonic()
    deliveries = plan.schedule.deliveries
    for first in range(0, len(deliveries), batch):
        chunk = deliveries[first : first + batch]
        await pace.wait_for(started, chunk[-1].due_s)
        if batch == 1:
            path, body = f"/v1/call/stream/{plan.call_id}", _packet(frames, chunk[0])
        else:
            path = f"/v1/call/stream/{plan.call_id}/batch"
            body = {"packets": [_packet(frames, d) for d in chunk]}
        if not _accepted(await _post(client, path, body, sent), sent, "packet"):
            return sent
        sent.deliveries += len(chunk)
        sent.last_packet_at = time.time()
        on_sent(len(chunk))
    completion = await _post(client, f"/v1/call/complete/{plan.call_id}", None, sent)
    sent.completed = _accepted(completion, sent, "complete")
    return sent


def _accepted(response: httpx.Response | None, sent: Sent, what: str) -> bool:
    """200/202; otherwise the call's error says why (None: `_post` already said)."""
    if response is not None and response.status_code in (200, 202):
        return True
    if response is not None:
        sent.error = f"{what} refused: {problem(response)}"
    return False


def _packet(frames: Sequence[bytes], delivery: Delivery) -> dict[str, Any]:
    return {
        "sequence": delivery.sequence,
        "data": base64.b64encode(frames[delivery.sequence]).decode(),
        "timestamp": round(delivery.sequence * FRAME_S, 3),  # seconds from the call's start
    }


async def _post(
    client: httpx.AsyncClient, path: str, body: dict[str, Any] | None, sent: Sent
) -> httpx.Response | None:
    """One request, waiting out 429/503 (Retry-After); None (and `sent.error`) if the server
    could not be reached."""
    for _ in range(BUSY_RETRIES + 1):
        sent.requests += 1
        try:
            response = await client.post(path, json=body)
        except httpx.HTTPError as exc:
            sent.error = f"POST {path}: {type(exc).__name__}: {exc}".rstrip(": ")
            return None
        check_access(response, f"POST {path}")
        if response.status_code not in (429, 503):
            return response
        sent.retries += 1
        await asyncio.sleep(retry_after_s(response))
    return response


def retry_after_s(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.1), MAX_RETRY_AFTER_S)
    except ValueError:
        return 1.0


def ws_url(base_url: str) -> str:
    scheme, rest = base_url.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest.rstrip('/')}/v1/call/media"


async def send_ws(
    url: str, headers: dict[str, str], plan: CallPlan, pace: Pace, on_sent: OnSent
) -> Sent:
    """The call as a Twilio Media Stream: connected, start, media frames, stop. The key goes in
    the handshake's headers (a client that can set them should; Twilio's <Stream> cannot)."""
    sent = Sent(requests=1)
    try:
        async with connect(url, additional_headers=headers, open_timeout=10) as ws:
            heard: list[dict[str, Any]] = []
            listener = asyncio.create_task(_listen(ws, heard))
            with contextlib.suppress(ConnectionClosed):  # what the server said is in `heard`
                await _stream(ws, plan, pace, on_sent, sent)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(listener), WS_CLOSE_WAIT_S)
            listener.cancel()
            _judge_ws(ws, heard, sent)
    except (OSError, TimeoutError, WebSocketException) as exc:
        socket_failed("the media WebSocket", exc, sent)
    return sent


def socket_failed(what: str, exc: OSError | TimeoutError | WebSocketException, sent: Sent) -> None:
    """What a socket that could not be used did to the run: a refused key stops it all
    (AccessRefused); any other failure is this call's error."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            raise AccessRefused(f"{what} was refused (HTTP {status})") from exc
        sent.error = f"{what}: handshake refused: HTTP {status}"
        return
    sent.error = f"{what}: {type(exc).__name__}: {exc}".rstrip(": ")


async def _stream(
    ws: ClientConnection, plan: CallPlan, pace: Pace, on_sent: OnSent, sent: Sent
) -> None:
    stream_sid = f"{STREAM_SID_PREFIX}{plan.call_id}"
    # Twilio numbers every message of the stream: start is 1, media from 2; chunk counts media.
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send(json.dumps(_start(plan, stream_sid)))
    frames = plan.frames()
    started = time.monotonic()
    deliveries = plan.schedule.deliveries
    for delivery in deliveries:
        await pace.wait_for(started, delivery.due_s)
        await ws.send(json.dumps(_media(frames, delivery, stream_sid)))
        sent.deliveries += 1
        sent.last_packet_at = time.time()
        on_sent(1)
    last = max((d.sequence for d in deliveries), default=0)
    stop = {"event": "stop", "sequenceNumber": str(last + 3), "streamSid": stream_sid}
    await ws.send(json.dumps({**stop, "stop": {"callSid": plan.call_id}}))


def _start(plan: CallPlan, stream_sid: str) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": stream_sid,
        "start": {
            "streamSid": stream_sid,
            "callSid": plan.call_id,
            "tracks": ["inbound"],
            "customParameters": {"simulated": "true", "mood": plan.mood},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }


def _media(frames: Sequence[bytes], delivery: Delivery, stream_sid: str) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": str(delivery.sequence + 2),
        "streamSid": stream_sid,
        "media": {
            "track": "inbound",
            "chunk": str(delivery.sequence + 1),
            "timestamp": str(round(delivery.sequence * FRAME_S * 1000)),
            "payload": base64.b64encode(frames[delivery.sequence]).decode(),
        },
    }


async def _listen(ws: ClientConnection, heard: list[dict[str, Any]]) -> None:
    """Every frame the server sends (only errors, in this protocol) until it closes."""
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            with contextlib.suppress(ValueError):
                frame = json.loads(message)
                if isinstance(frame, dict):
                    heard.append(frame)


def _judge_ws(ws: ClientConnection, heard: Sequence[dict[str, Any]], sent: Sent) -> None:
    errors = [frame for frame in heard if frame.get("event") == "error"]
    if errors:
        first = errors[0]
        reason = f"{first.get('code')}: {first.get('message')}"
        if first.get("code") in ("unauthenticated", "forbidden"):
            raise AccessRefused(f"the media WebSocket was refused: {reason}")
        sent.error = f"WebSocket closed with an error: {reason}"
        return
    code = ws.close_code
    if code == 1000:
        sent.completed = True
    elif code is None:
        sent.error = f"the server did not close the stream within {WS_CLOSE_WAIT_S:g}s of stop"
    else:
        sent.error = f"WebSocket closed with code {code} ({ws.close_reason or 'no reason'})"
