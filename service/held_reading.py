"""A socket whose messages its app may take as they are read, and whose reading it may then hold
(what service/ws_protocol.py's WebSockets and the AudioSocket connections share). The app
attaches sinks (FrameSinks, service/asgi.py), offered each message only once it has handled, and
reopened them after, every message it received otherwise (`reopen`): messages reach it in the
order they were read. After a read in which a sink took messages, the socket is
not read again until the time the app names (`hold_until`: the end of its hold window, when it
stores what it holds), so that what the peer sends meanwhile waits in the kernel and comes in
one read, not a read and a wake-up of the loop for every 20 ms frame. Before it stores, the app
reads what has come (`caught_up`): a frame in the socket's buffer is stored as if it had been
read as it came.

A mixin for an asyncio protocol: it reads `transport` and `loop`, and the class says when its
own queue is full (`queue_full`: reading stays paused then, whatever the hold) and offers each
message to `sink` or `binary_sink` while `sink_open`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.asgi import BinarySink, TextSink

# How long caught_up() waits for a read when reading is let go: a read that is waiting comes in
# the loop's next polling, before any timer is due; this only ends the wait when nothing came.
READ_TURN_S = 0.001


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# What caught_up() waits for when nothing comes: one READ_TURN_S timer shared by every socket
# that lets its reading go meanwhile, not a timer each. A window's stores follow these waits;
# with a timer each, due a moment apart, they fell in different ticks and went to Redis in
# several batches (db/pipelining.py: a batch is what is ready in one tick). A socket that joins
# a turn armed earlier still gets the loop's next poll first: a loop runs its due timers before
# its ready callbacks, and polls after them.
_turn: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None


def _read_turn(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    global _turn
    if _turn is None or _turn[0] is not loop or _turn[1].done():
        turn = loop.create_future()
        loop.call_later(READ_TURN_S, _settle, turn)
        _turn = (loop, turn)
    return _turn[1]


class HeldReading:
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    sink: TextSink | None = None
    binary_sink: BinarySink | None = None
    sink_open = False  # the app has handled every message it received (reopen)
    # When the app wants the socket read again after a read its sink took messages in (None:
    # as they come); reading is held meanwhile, until the timer or caught_up() lets it go.
    hold_until: Callable[[], float | None] | None = None
    reads_held = False
    unread = False  # reading was let go and nothing has been read since
    _release: asyncio.TimerHandle | None = None
    _read_waiters: list[asyncio.Future[None]] | None = None

    def attach(
        self,
        sink: TextSink | None,
        hold_until: Callable[[], float | None] | None = None,
        binary: BinarySink | None = None,
    ) -> None:
        """Offer the socket's text messages to `sink` and its binary ones to `binary` (None:
        queue them all again); with `hold_until`, hold the reading after a read the sinks took
        messages in, until the time it gives (the loop's clock; None: read on)."""
        self.sink = sink
        self.binary_sink = binary
        self.sink_open = self._has_sink()
        self.hold_until = hold_until if self.sink_open else None
        if self.hold_until is None:
            self._let_go()

    def reopen(self) -> None:
        """The app has handled the messages it received: the sinks may take the next ones."""
        self.sink_open = self._has_sink()

    def _has_sink(self) -> bool:
        return self.sink is not None or self.binary_sink is not None

    def queue_full(self) -> bool:
        """Whether the protocol's queue for the app keeps the reading paused (its own rule)."""
        return False

    def queue_empty(self) -> bool:
        """Whether no message waits in the protocol's queue for the app."""
        raise NotImplementedError

    def _may_offer(self) -> bool:
        """Whether a sink may be offered the message just read: messages reach the app in the
        order they were read only if it has handled (and reopened the sinks after) every message
        it received, and none waits in the queue."""
        return self.sink_open and self.queue_empty()

    async def caught_up(self) -> None:
        """Return once what the peer has sent so far is read (into the sink, or the queue), if
        the reading was held: it is let go, and the next read (or one turn of the loop's
        polling, when nothing came) ends the wait."""
        if not (self.reads_held or self.unread):
            return
        self._let_go()
        if self.queue_full() or self.transport.is_closing():
            return  # the queue is full (the app reads it first), or the socket is gone
        read = self.loop.create_future()
        if self._read_waiters is None:
            self._read_waiters = []
        self._read_waiters.append(read)
        _read_turn(self.loop).add_done_callback(lambda _: _settle(read))
        await read

    def _after_read(self, taken: int) -> None:
        """A read is done, the sink having taken `taken` of its messages: caught_up()'s waits
        end, and the reading is held until the app's time if the sink took any."""
        self.unread = False
        waiters, self._read_waiters = self._read_waiters, None
        for waiter in waiters or ():
            _settle(waiter)
        if taken and self.hold_until is not None and not self.reads_held:
            until = self.hold_until()
            if until is not None and until > self.loop.time():
                self.reads_held = True
                self.transport.pause_reading()
                self._release = self.loop.call_at(until, self._let_go)

    def _let_go(self) -> None:
        if self._release is not None:
            self._release.cancel()
            self._release = None
        if not self.reads_held:
            return
        self.reads_held = False
        self.unread = True
        if not self.queue_full() and not self.transport.is_closing():
            self.transport.resume_reading()

    def _reading_over(self) -> None:
        """The connection is lost: no hold, and nobody waits for a read."""
        self.hold_until = None
        self._let_go()
        self._after_read(0)
