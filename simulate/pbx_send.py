"""Sending a planned two-party call over a PBX feed, as the PBX would (simulate/pbx.py's peers):
Asterisk AudioSocket (a TCP connection a party, to the caller's and the agent's listeners),
Asterisk chan_websocket (a socket a party), FreeSWITCH mod_audio_stream (one stereo stream) or
Genesys AudioHook (one session, both channels). Frames go out at the plan's pace, 20 ms of each
party a tick; a refused key stops the whole run (`AccessRefused`), anything else fails only the
call it happened to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from websockets.exceptions import WebSocketException

from simulate import speech
from simulate.pbx import (
    AsteriskWebSocketPeer,
    AudioHookPeer,
    AudioSocketPeer,
    FreeSwitchPeer,
    closing,
)
from simulate.plan import FRAME_S, CallPlan
from simulate.transports import OnSent, Pace, Sent, socket_failed

# Sends one tick: the caller's frame and the agent's (μ-law, 20 ms each).
Tick = Callable[[bytes, bytes], Awaitable[None]]


@dataclass(frozen=True)
class PbxTargets:
    """Where the feeds are: the API's base WebSocket URL, and AudioSocket's two listeners."""

    ws_base: str  # ws://host:port
    audiosocket_caller: tuple[str, int]
    audiosocket_agent: tuple[str, int]


def interleave(left: bytes, right: bytes, width: int) -> bytes:
    """Two channels of equal length, sample by sample."""
    return b"".join(
        left[at : at + width] + right[at : at + width] for at in range(0, len(left), width)
    )


async def _paced(plan: CallPlan, pace: Pace, on_sent: OnSent, sent: Sent, tick: Tick) -> None:
    started = time.monotonic()
    for index, (caller, agent) in enumerate(zip(plan.frames(), plan.agent_frames(), strict=True)):
        await pace.wait_for(started, index * FRAME_S)
        await tick(caller, agent)
        sent.deliveries += 1
        sent.last_packet_at = time.time()
        on_sent(1)


async def send_pbx(
    plan: CallPlan, targets: PbxTargets, api_key: str | None, pace: Pace, on_sent: OnSent
) -> Sent:
    sent = Sent(requests=1)
    try:
        if plan.transport == "audiosocket":
            await _audiosocket(plan, targets, pace, on_sent, sent)
        elif plan.transport == "asterisk":
            await _asterisk(plan, f"{targets.ws_base}/v1/call/asterisk", api_key, pace, on_sent,
                            sent)  # fmt: skip
        elif plan.transport == "freeswitch":
            await _freeswitch(plan, f"{targets.ws_base}/v1/call/freeswitch", api_key, pace,
                              on_sent, sent)  # fmt: skip
        else:
            await _audiohook(plan, f"{targets.ws_base}/v1/call/audiohook", api_key, pace,
                             on_sent, sent)  # fmt: skip
    except (OSError, TimeoutError, WebSocketException) as exc:
        socket_failed(f"the {plan.transport} feed", exc, sent)
    return sent


async def _audiosocket(
    plan: CallPlan, targets: PbxTargets, pace: Pace, on_sent: OnSent, sent: Sent
) -> None:
    call = uuid.UUID(plan.call_id)
    caller = await AudioSocketPeer.connect(*targets.audiosocket_caller)
    agent = await AudioSocketPeer.connect(*targets.audiosocket_agent)
    try:
        for party in (caller, agent):
            await party.send_uuid(call)

        async def tick(mine: bytes, theirs: bytes) -> None:  # the dialplan app's slin
            await caller.send_audio(speech.linear(mine), 320)
            await agent.send_audio(speech.linear(theirs), 320)

        await _paced(plan, pace, on_sent, sent, tick)
        for party in (caller, agent):
            await party.hangup()
        answers = [await party.answer() for party in (caller, agent)]
    finally:
        for party in (caller, agent):
            await party.close()
    if any(answers):
        sent.error = "an AudioSocket session was ended with an error (0xff): see the API's log"
    else:
        sent.completed = True


async def _asterisk(
    plan: CallPlan, url: str, key: str | None, pace: Pace, on_sent: OnSent, sent: Sent
) -> None:
    caller = await AsteriskWebSocketPeer.connect(url, {"call_id": plan.call_id}, key)
    agent = await AsteriskWebSocketPeer.connect(
        url, {"call_id": plan.call_id, "track": "outbound"}, key
    )
    for index, party in enumerate((caller, agent)):
        await party.media_start(f"{int(time.time())}.{index}")

    async def tick(mine: bytes, theirs: bytes) -> None:
        await caller.ws.send(mine)
        await agent.ws.send(theirs)

    try:
        await _paced(plan, pace, on_sent, sent, tick)
    finally:
        closes = [await party.close() for party in (caller, agent)]
    _judge(sent, closes)


async def _freeswitch(
    plan: CallPlan, url: str, key: str | None, pace: Pace, on_sent: OnSent, sent: Sent
) -> None:
    stream = await FreeSwitchPeer.connect(url)
    metadata = {"call_id": plan.call_id, "channels": 2, "simulated": True}
    await stream.metadata({**metadata, "key": key} if key else metadata)

    async def tick(mine: bytes, theirs: bytes) -> None:  # stereo L16: caller left
        await stream.ws.send(interleave(speech.linear(mine), speech.linear(theirs), 2))

    try:
        await _paced(plan, pace, on_sent, sent, tick)
    finally:
        closes = [await stream.close()]
    _judge(sent, closes)


async def _audiohook(
    plan: CallPlan, url: str, key: str | None, pace: Pace, on_sent: OnSent, sent: Sent
) -> None:
    session = await AudioHookPeer.connect(url, key or "simulated")
    opened = await session.open(plan.call_id)
    if not opened["parameters"].get("media"):
        await closing(session.ws)
        sent.error = f"AudioHook: the server opened no media: {opened}"
        return

    async def tick(mine: bytes, theirs: bytes) -> None:  # PCMU, external then internal
        await session.send_audio(interleave(mine, theirs, 1), channels=2, frame_ms=20)

    await _paced(plan, pace, on_sent, sent, tick)
    with contextlib.suppress(asyncio.TimeoutError):
        closed = await session.close()
        sent.completed = closed.get("type") == "closed"
    if not sent.completed:
        sent.error = f"AudioHook: no closed after close (close code {session.ws.close_code})"


def _judge(sent: Sent, closes: list[tuple[int | None, str]]) -> None:
    refused = [(code, reason) for code, reason in closes if code != 1000]
    if refused:
        code, reason = refused[0]
        sent.error = f"closed with code {code} ({reason or 'no reason'})"
    else:
        sent.completed = True
