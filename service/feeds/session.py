"""One PBX feed connection, whatever its protocol: it opens the call (its audio format as
`mediaFormat`, as a Twilio `start` gives it), takes each track's raw audio through a Timeline,
holds the packets for others to share their Redis round trip (service/streaming.py: the media
stream's hold and batch size), stores them through core/ingestion.py (every rule, limit and
metric of the Twilio stream), and at its end stores what is left and ends its feed: the call
completes when the last of its feeds ends (a socket a track, or one for both).

Refusals are `FeedRefused`, with what kind of refusal it is; each protocol module answers it in
its own words (a WebSocket close code, AudioSocket's error kind).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, TypeVar

from core import metrics
from core.audio import UnsupportedAudio
from core.errors import CallstreamError, RedisUnavailable
from core.ingestion import CALL_ID_RULE, Ingestion, is_call_id
from db.outages import REDIS_OUTAGE
from db.packets import NewPacket, Track
from service.asgi import FrameSinks
from service.feeds.timeline import FeedFormat, Timeline
from service.streaming import CLOSED, FLUSH_AT, append_or_pause, store_at

T = TypeVar("T")

log = logging.getLogger(__name__)
# The most audio one frame may carry: PBXs send 20 ms (mod_audio_stream up to its buffer size);
# a larger frame would hold that much in memory and store it in one go.
MAX_FRAME_S = 1.0
_ENDING_FAILURES: tuple[type[Exception], ...] = (CallstreamError, *REDIS_OUTAGE)


class Refusal(StrEnum):
    """What kind of refusal ends a feed (each protocol says it its own way)."""

    MALFORMED = "malformed"  # data that cannot be understood (WebSocket 1003)
    POLICY = "policy"  # a rule broken: a completed call, a cap, a key (1008)
    RETRY = "retry"  # try again later: Redis, the backlog, replicas (1013)
    IDLE = "idle"  # nothing came for too long (1001)
    TOO_BIG = "too_big"  # a frame past MAX_FRAME_S of audio (1009)


class FeedRefused(Exception):
    def __init__(self, code: str, message: str, refusal: Refusal = Refusal.MALFORMED) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.refusal = refusal

    @classmethod
    def breaking(cls, error: CallstreamError) -> FeedRefused:
        """A rule of core/ingestion.py (or access) the feed broke; a 503 is worth a retry."""
        refusal = Refusal.RETRY if error.status_code == 503 else Refusal.POLICY
        return cls(error.code, error.detail, refusal)

    @classmethod
    def outage(cls) -> FeedRefused:
        error = RedisUnavailable()
        return cls(error.code, error.detail, Refusal.RETRY)

    @classmethod
    def audio(cls, error: UnsupportedAudio) -> FeedRefused:
        return cls("unsupported_audio", str(error), Refusal.MALFORMED)


# The PBX handle of a feed's message: True when the feed is over (a graceful end).
Handler = Callable[[object], Awaitable[bool]]
# A feed's next message (CLOSED once the peer went away), waiting for it until the deadline
# given, on the loop's clock (TimeoutError past it). A deadline, not a delay: the feeds of a
# window wait for the same moment, and their timers fire in the same turn of the loop.
NextMessage = Callable[[float], Awaitable[object]]
# A feed's audio path, run as its socket reads a message (FeedSession.read_audio_from): True when
# it took it (plain audio of a started feed), False to let it reach the feed's handler, which
# answers it. It must not block; what it raises declines the message too (the handler meets it
# again and refuses it).
TakeAudio = Callable[[bytes], bool]


class Wait:
    """A NextMessage's wait, until the pump's deadline or, when audio taken as it was read is
    to be stored sooner (FeedSession.read_audio_from), until then."""

    def __init__(self) -> None:
        self._timeout: asyncio.Timeout | None = None

    async def until(self, deadline: float, message: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout_at(deadline) as self._timeout:
                return await message
        finally:
            self._timeout = None

    def wake_by(self, deadline: float) -> None:
        timeout = self._timeout
        if timeout is not None:
            when = timeout.when()
            if when is None or deadline < when:
                timeout.reschedule(deadline)


class FeedSession:
    def __init__(self, ingestion: Ingestion, transport: str, actor: str) -> None:
        self.ingestion = ingestion
        self.transport = transport  # the protocol's name, kept with the call and in metrics
        self.actor = actor  # who the audit trail names for the completion
        self.feed_id = uuid.uuid4().hex
        self.call_id: str | None = None
        self.timeline: Timeline | None = None
        self.buffer: list[NewPacket] = []
        self.store_by = 0.0  # when the packets held are stored (streaming.store_at)
        # A socket whose audio is taken as it reads it (read_audio_from), and the pump's wait.
        self._sinks: FrameSinks | None = None
        self._wait: Wait | None = None
        # The loop's clock, as the media stream's: the windows of every feed and stream of the
        # process end together, and the hold's timer is armed on the clock it is measured by.
        self._clock = asyncio.get_running_loop().time
        self.outcome = "dropped"  # what the metrics count when it ends

    @property
    def opened(self) -> bool:
        return self.timeline is not None

    async def join(self, call_id: str) -> None:
        """This feed is one of the call's: the call completes only once it has ended (called
        as soon as the protocol names the call, before its audio's format may be known)."""
        if self.call_id == call_id:
            return
        if self.call_id is not None:
            raise FeedRefused("call_changed", "a feed carries one call", Refusal.POLICY)
        if not is_call_id(call_id):
            raise FeedRefused("invalid_call_id", f"the call id must be {CALL_ID_RULE}",
                              Refusal.POLICY)  # fmt: skip
        try:
            await self.ingestion.feed_opened(call_id, self.feed_id)
        except REDIS_OUTAGE:
            raise FeedRefused.outage() from None
        self.call_id = call_id

    async def open(
        self, call_id: str, fmt: FeedFormat, metadata: dict[str, Any], origin: float | None = None
    ) -> None:
        """Open the call (or join it: the second socket of a two-party call) with this feed's
        format; its timeline starts at `origin` (epoch seconds; now by default)."""
        await self.join(call_id)
        media_format = fmt.media_format()
        opened = {"transport": self.transport, **metadata, "mediaFormat": media_format}
        try:
            first = await self.ingestion.open_call(call_id, opened)
            if not first:
                earlier = await self.ingestion.opened_with(call_id)
                if earlier is not None and earlier.get("mediaFormat") != media_format:
                    raise FeedRefused(
                        "format_mismatch",
                        f"call {call_id} was opened with {earlier.get('mediaFormat')}; this "
                        f"feed sends {media_format}: both parties of a call share one format",
                    )
        except CallstreamError as error:
            raise FeedRefused.breaking(error) from None
        except REDIS_OUTAGE:
            raise FeedRefused.outage() from None
        self.timeline = Timeline(fmt, time.time() if origin is None else origin)

    def _timeline(self) -> Timeline:
        if self.timeline is None:
            raise FeedRefused("not_started", "audio before the call was opened", Refusal.POLICY)
        return self.timeline

    def _bounded(self, data: bytes) -> Timeline:
        timeline = self._timeline()
        fmt = timeline.fmt
        limit = round(fmt.rate * MAX_FRAME_S) * fmt.sample_bytes * fmt.channels
        if len(data) > limit:
            raise FeedRefused("frame_too_large", f"a frame of {len(data)} bytes: more than "
                              f"{MAX_FRAME_S:g} s of audio", Refusal.TOO_BIG)  # fmt: skip
        return timeline

    def take(self, track: Track, data: bytes) -> None:
        """One track's raw audio (any whole number of samples)."""
        try:
            self._hold(self._bounded(data).add(track, data))
        except UnsupportedAudio as error:
            raise FeedRefused.audio(error) from None

    def take_interleaved(self, data: bytes, tracks: tuple[Track, Track]) -> None:
        try:
            self._hold(self._bounded(data).add_interleaved(data, tracks))
        except UnsupportedAudio as error:
            raise FeedRefused.audio(error) from None

    def skip_to(self, track: Track, position_s: float) -> None:
        """A pause in the track: silence up to `position_s` of its timeline."""
        self._hold(self._timeline().skip_to(track, position_s))

    def _hold(self, packets: list[NewPacket]) -> None:
        if packets and not self.buffer:
            # The end of the process' hold window the oldest fell in (service/streaming.py's
            # store_at): every feed of the process stores in the same tick, and their stores
            # share one Redis round trip, as the media streams' do.
            self.store_by = store_at(self._clock())
            if self._wait is not None:  # taken as it was read: the pump stores it by then
                self._wait.wake_by(self.store_by)
        self.buffer += packets

    def read_audio_from(self, sinks: FrameSinks, wait: Wait, audio: TakeAudio) -> None:
        """Take the feed's audio as its socket reads it (`sinks`: service/ws_protocol.py, an
        AudioSocket connection), not through the pump one message at a time: `audio` is the
        socket's binary sink, the pump (waiting in `wait`) is woken once a hold window to store
        what it took, and the socket is read again only then (held_reading.py), what it holds
        read first. Messages reach the feed in the order they were read: the sink takes one only
        once the pump has handled every message it received."""

        def take(data: bytes) -> bool:
            if len(self.buffer) >= FLUSH_AT:
                return False  # the pump stores first: it meets this one after
            try:
                return audio(data)
            except Exception:  # a sink must not raise: the handler meets it and answers it
                return False

        self._sinks, self._wait = sinks, wait
        sinks.attach(None, self._read_again_at, binary=take)

    def _read_again_at(self) -> float | None:
        """When the socket is read again after a read the sink took audio in: at the store of
        what it brought, so that a window's frames come in one read."""
        return self.store_by if self.buffer else None

    @property
    def due(self) -> bool:
        """Enough is waiting, or the oldest's hold window is over."""
        return len(self.buffer) >= FLUSH_AT or (
            bool(self.buffer) and self._clock() >= self.store_by
        )

    async def flush(self) -> None:
        if self._sinks is not None:
            await self._sinks.caught_up()  # what the socket holds goes with this store
        if not self.buffer or self.call_id is None:
            return
        packets, self.buffer = self.buffer, []
        try:
            await append_or_pause(self.ingestion, self.call_id, packets)
        except CallstreamError as error:
            raise FeedRefused.breaking(error) from None
        except REDIS_OUTAGE:
            raise FeedRefused.outage() from None

    async def settle(self) -> FeedRefused | None:
        """Store what is held and each track's last part frame; the refusal if that failed."""
        if self.timeline is not None:
            self.buffer += self.timeline.finish()
        try:
            await self.flush()
        except FeedRefused as refused:
            log.warning("%s feed of call %s: its last packets were refused: %s",
                        self.transport, self.call_id, refused.message)  # fmt: skip
            return refused
        return None

    async def end(self) -> None:
        """The feed is over: the call completes if it was its last open feed. Never raises: a
        call left open by a failure here completes by the idle sweep."""
        metrics.count_feed_session(self.transport, self.outcome)
        if self.call_id is None:
            return
        try:
            await self.ingestion.feed_ended(self.call_id, self.feed_id, actor=self.actor)
        except _ENDING_FAILURES as exc:
            log.warning("%s feed of call %s ended but could not complete the call (%r); the "
                        "idle sweep will", self.transport, self.call_id, exc)  # fmt: skip

    async def pump(
        self, next_message: NextMessage, handle: Handler, idle_s: float, start_s: float
    ) -> None:
        """Feed `handle` each message `next_message` gives (CLOSED: the peer went away),
        storing held packets when due: a packet waits at most HOLD_S (to the end of the
        process' hold window it came in) for others to share its round trip; with nothing
        held, the wait is the idle timeout's. A feed that has not
        named its call (and brought its key, where it brings it in a message) within
        `start_s` (WS_START_TIMEOUT_S) of connecting is refused."""
        start_by = self._clock() + start_s
        while True:
            deadline = self._clock() + idle_s
            if self.buffer:
                deadline = self.store_by
            elif self.call_id is None:
                deadline = min(deadline, start_by)
            try:
                message = await next_message(deadline)
            except TimeoutError:
                if self.buffer:
                    await self.flush()
                    continue
                if self.call_id is None:
                    late = f"the call was not named within {start_s:g}s (WS_START_TIMEOUT_S)"
                    raise FeedRefused("start_timeout", late, Refusal.POLICY) from None
                raise FeedRefused("idle_timeout", f"nothing came for {idle_s:g}s",
                                  Refusal.IDLE) from None  # fmt: skip
            if message is CLOSED:
                return
            if await self._handled(handle, message):
                return

    async def _handled(self, handle: Handler, message: object) -> bool:
        """`handle` the message; True when the feed is over. Then the sink may take the next
        message, and what is due is stored."""
        if await handle(message):
            self.outcome = "ended"
            return True
        if self._sinks is not None:
            self._sinks.reopen()
        if self.due:
            await self.flush()
        return False

    async def finish(self, refused: FeedRefused | None) -> FeedRefused | None:
        """After the pump: store what is left, and say what the feed ended with (the pump's
        refusal, else a refused last store). The caller answers it, then calls end()."""
        if self._sinks is not None:  # what the socket brings after the end is not the feed's
            self._sinks.attach(None)
            self._sinks = self._wait = None
        failed = await self.settle()
        refused = refused or failed
        if refused is not None:
            self.outcome = refused.code
        return refused
