"""What every streaming feed shares, whatever its protocol (the Twilio media stream in
service/routes/media_ws.py, the PBX feeds in service/feeds/): how long a packet is held for others
to share its Redis round trip, how many are stored at once, how far an AudioSocket is read
ahead while a store is in flight (backpressure beyond), and how a bare ASGI socket (the media
stream's) waits for its next message by a deadline (Waiter)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from starlette.types import Message, Receive

from core.errors import FlushBehind
from core.ingestion import Ingestion
from db.packets import PacketFields

FLUSH_AT = 50  # packets buffered before one append, at most
# How long a packet may wait for others to share its Redis round trip. At real-time pace a
# stream sends a frame (two with both tracks) every 20 ms: storing each at once costs a script
# call per tick, most of the API's and Redis' CPU per call (BENCHMARKS.md, Real calls); 150 ms
# stores seven or eight ticks at a time (the windows of a process' streams and feeds are
# aligned, store_at: a packet waits 75 ms on average). Against 100 ms it cost the stack about
# 10% less CPU a call-minute at 150 calls (API 12%, Redis 8%) for about 50 ms more status lag:
# p99 141-175 ms in the runs measured, of the 250 ms a status may trail (BENCHMARKS.md,
# Real-time capacity, issue 27's seventh stop).
# The WebSocket acknowledges no frame, so nothing a client was told is held.
HOLD_S = 0.15
READ_AHEAD = 256  # AudioSocket messages read while a flush is in flight (backpressure beyond)

CLOSED = object()  # the reader's sentinel: the client went away
# A call whose unflushed tail is at its bound (TAIL_MAX_SEGMENTS) pauses its stream, trying
# again every PAUSE_S, for at most PAUSE_MAX_S (a segment's flush takes about a second; longer
# means the worker is down, and the client is told to come back: 1013).
PAUSE_S = 0.2
PAUSE_MAX_S = 15.0


def store_at(held_since: float) -> float:
    """When packets held since `held_since` (the loop's clock) are stored: the end of the
    HOLD_S window of the process' clock that they fell in, not HOLD_S after each stream's own
    first packet. Every stream and feed of the process then stores in the same loop tick, and
    those stores share one pipelined Redis round trip (db/pipelining.py) instead of one each; a
    packet still waits at most HOLD_S (on average half)."""
    return (held_since // HOLD_S + 1) * HOLD_S


class Waiter:
    """`receive` with a deadline, for a bare ASGI socket (service/routes/media_ws.py), without a
    timer or a task per message: one timer per deadline, armed again only when the deadline
    moves (a media stream's is the end of its hold window, the same for every frame in it).
    Its expiry cancels the task only while it waits in `receive` (TimeoutError to the caller);
    a message already received is returned, and one that came as it expired stays with the
    server for the next `receive` (asyncio.Queue.get gives nothing up when cancelled)."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._timer: asyncio.TimerHandle | None = None
        self._armed = math.nan
        self._waiting = False
        self._expired = False

    async def receive(self, deadline: float) -> Message:
        if deadline != self._armed:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._expire)
            self._armed = deadline
        self._waiting = True
        try:
            return await self._receive()
        except asyncio.CancelledError:
            if not self._expired:
                raise
            self._expired = False
            if self._task.uncancel() > 0:  # cancelled by someone else too
                raise
            raise TimeoutError from None
        finally:
            self._waiting = False

    def wake_by(self, deadline: float) -> None:
        """End the wait in `receive` by `deadline` at the latest (the loop's clock), if it was
        to last longer: something the caller holds is due by then (a media stream's first held
        frame, taken in while it waited: service/ws_protocol.py's sink)."""
        if self._waiting and deadline < self._armed:
            assert self._timer is not None
            self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._expire)
            self._armed = deadline

    def _expire(self) -> None:
        self._timer = None
        self._armed = math.nan  # passed while not waiting: armed again, to fire at once
        if self._waiting:
            self._expired = True
            self._task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def append_or_pause(
    ingestion: Ingestion, call_id: str, packets: Sequence[PacketFields]
) -> None:
    """Append; while the call's unflushed tail is at its bound (FlushBehind: the worker is
    behind), pause and try again, up to PAUSE_MAX_S: the socket is not read meanwhile (a feed
    reads nothing while it stores, an AudioSocket connection stops at READ_AHEAD messages), so the
    peer is held back by TCP rather than refused. Then the refusal stands (retryable)."""
    waited = 0.0
    while True:
        try:
            await ingestion.append(call_id, packets)
            return
        except FlushBehind:
            if waited >= PAUSE_MAX_S:
                raise
            await asyncio.sleep(PAUSE_S)
            waited += PAUSE_S
