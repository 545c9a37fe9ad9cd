"""Ingestion, in one place: the rules a packet must meet, storing packets, the answers, and
completing a call (then queueing its job). Every transport is a thin adapter over this module:
the bare-ASGI fast path and the FastAPI routes (service/), the media WebSocket, and the worker's
idle sweep; so every rule here holds for all of them, and a new transport is a new thin file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from core import metrics
from core.audit import audit
from core.backlog import Backlog
from core.errors import (
    CallAlreadyCompleted,
    CallTooLarge,
    FlushBehind,
    InvalidText,
    MetadataTooLarge,
    NotYetReplicated,
    PayloadTooLarge,
)
from core.held import HeldPackets
from db.intake import CallCap, CallCompleted, CallFull, CallIntake, Completion, TailFull
from db.outages import REDIS_OUTAGE
from db.packets import Outcome, PacketFields, PacketResult
from db.pipelining import NotReplicated

MAX_SEQUENCE = 2**53 - 1  # exact in every JSON implementation and in Redis' Lua
# At least one character that is not a dot: `.` and `..` are path segments to every URL and
# filesystem (an object store's key, a proxy's normalised path), never names. The pattern has no
# length and no lookahead (FastAPI's patterns run on Rust's regex engine): CALL_ID_MAX_LENGTH.
CALL_ID_PATTERN = r"^\.*[A-Za-z0-9_:-][A-Za-z0-9._:-]*$"
CALL_ID_MAX_LENGTH = 128
CALL_ID_RULE = "1-128 characters of A-Z a-z 0-9 . _ : -, not only dots"
MAX_METADATA_BYTES = 16 * 1024  # what a call may be opened with (a media stream's start)

log = logging.getLogger(__name__)
_CALL_ID = re.compile(CALL_ID_PATTERN.strip("^$"))

# Queues the call's job (jobs/queue.py's enqueuer): a second call for one call id is a no-op.
EnqueueCall = Callable[[str], Awaitable[object]]
# Queues a flush of a live call's unflushed tail, the ingest script's request number given.
EnqueueSegment = Callable[[str, int], Awaitable[object]]


def is_call_id(value: object) -> bool:
    # fullmatch: with re.match, "$" would also match before a trailing newline.
    return (
        isinstance(value, str)
        and len(value) <= CALL_ID_MAX_LENGTH
        and _CALL_ID.fullmatch(value) is not None
    )


def check_data_size(packet: PacketFields, limit: int) -> None:
    """A packet's data is limited in UTF-8 bytes, whatever transport carried it."""
    data = packet.data
    # len(str) <= bytes <= 4 * len(str): encode only when the answer is not already known.
    if len(data) > limit or (len(data) * 4 > limit and len(data.encode()) > limit):
        raise PayloadTooLarge(
            f"packet {packet.sequence}: data is larger than {limit} bytes (MAX_PACKET_DATA_BYTES)"
        )


def check_batch_size(count: int, limit: int) -> None:
    if count > limit:
        raise PayloadTooLarge(f"a batch holds at most {limit} packets (MAX_BATCH_PACKETS)")


def check_metadata_size(metadata: dict[str, Any]) -> None:
    """A start message is kept as JSON, in Redis then in PostgreSQL: bounded in size and depth,
    and free of NUL characters, which PostgreSQL's JSON cannot hold."""
    try:
        encoded = orjson.dumps(metadata)
    except orjson.JSONEncodeError:
        raise MetadataTooLarge("the start message is nested too deeply") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise MetadataTooLarge(f"the start message exceeds {MAX_METADATA_BYTES} bytes")
    if b"\\u0000" in encoded:
        raise InvalidText("the start message holds a NUL character (\\u0000)")


def _warning(kind: str, message: str, first: int | None = None, last: int | None = None) -> Any:
    return {"type": kind, "message": message, "missing_from": first, "missing_to": last}


def warnings_of(result: PacketResult) -> list[dict[str, Any]]:
    seq = result.sequence
    if result.outcome is Outcome.IN_ORDER:
        return []
    if result.outcome is Outcome.DUPLICATE:
        return [_warning("duplicate", f"sequence {seq} was already received")]
    if result.outcome is Outcome.OUT_OF_ORDER:
        return [_warning("out_of_order", f"sequence {seq} arrived after a higher sequence")]
    first, last = result.gap_from, seq - 1
    return [_warning("gap", f"sequences {first}..{last} are missing so far", first, last)]


def packet_answer(call_id: str, result: PacketResult) -> dict[str, Any]:
    """The answer to one packet as a JSON-ready dict: the FastAPI route returns it through its
    response model, the fast path serialises it directly; one builder, so both answer alike."""
    return {
        "call_id": call_id,
        "sequence": result.sequence,
        "duplicate": result.duplicate,
        "warnings": warnings_of(result),
    }


def batch_answer(call_id: str, results: Sequence[PacketResult]) -> dict[str, Any]:
    duplicates = sum(r.duplicate for r in results)
    return {
        "call_id": call_id,
        "accepted": len(results) - duplicates,
        "duplicates": duplicates,
        "results": [packet_answer(call_id, r) for r in results],
    }


@dataclass(frozen=True, slots=True)
class Limits:
    max_packet_data_bytes: int
    max_batch_packets: int
    metadata_ttl_s: int  # bounds the metadata of a call that never sends a packet


@dataclass(frozen=True, slots=True)
class Ingestion:
    intake: CallIntake
    enqueue: EnqueueCall
    limits: Limits
    backlog: Backlog
    enqueue_segment: EnqueueSegment | None = None
    # What transports of this process hold back for a call: stored before its completion.
    held: HeldPackets = field(default_factory=HeldPackets)

    @metrics.measured_append
    async def append(self, call_id: str, packets: Sequence[PacketFields]) -> list[PacketResult]:
        """Store packets of one call in one Redis round trip, or refuse them all."""
        for packet in packets:
            check_data_size(packet, self.limits.max_packet_data_bytes)
        await self.backlog.admit(call_id)
        try:
            appended = await self.intake.append(call_id, packets)
        except CallCompleted:
            raise CallAlreadyCompleted(
                f"call {call_id} is already completed; packets are no longer accepted"
            ) from None
        except CallFull as full:
            raise CallTooLarge(_call_full_detail(full)) from None
        except TailFull as full:
            raise FlushBehind(
                f"call {call_id}'s audio not yet stored in PostgreSQL is at its bound "
                f"({full.entries} packets; TAIL_MAX_SEGMENTS): the worker is behind. Nothing of "
                "these packets was stored; send them again after Retry-After",
                {"Retry-After": "1"},
            ) from None
        except NotReplicated as short:
            raise NotYetReplicated(_not_replicated_detail("packets", short)) from None
        if appended.segment_asked and self.enqueue_segment is not None:
            await self._ask_segment(call_id, appended.segment_asked)
        return appended

    async def _ask_segment(self, call_id: str, asked: int) -> None:
        """Queue the flush the ingest script asked for. The packets are stored whatever happens
        here: if the queue cannot take the job, the reaper asks again (the segments index)."""
        assert self.enqueue_segment is not None
        try:
            await self.enqueue_segment(call_id, asked)
        except REDIS_OUTAGE as exc:
            log.warning("call %s: segment flush not queued (%r); the reaper will ask", call_id, exc)

    async def packet(self, call_id: str, packet: PacketFields) -> tuple[int, dict[str, Any]]:
        """One packet: 202 when new, 200 for a duplicate, and the answer."""
        (result,) = await self.append(call_id, [packet])
        return (200 if result.duplicate else 202), packet_answer(call_id, result)

    async def batch(self, call_id: str, packets: Sequence[PacketFields]) -> dict[str, Any]:
        with metrics.counting_refusals(len(packets)):
            check_batch_size(len(packets), self.limits.max_batch_packets)
        return batch_answer(call_id, await self.append(call_id, packets))

    async def open_call(self, call_id: str, metadata: dict[str, Any]) -> bool:
        """Keep what the call is opened with; False when an earlier opening's is kept."""
        check_metadata_size(metadata)
        return await self.intake.open_call(call_id, metadata, self.limits.metadata_ttl_s)

    async def opened_with(self, call_id: str) -> dict[str, Any] | None:
        """What the call was opened with: a second feed of one call must agree with the first."""
        return await self.intake.metadata(call_id)

    async def feed_opened(self, call_id: str, feed_id: str) -> None:
        await self.intake.feed_opened(call_id, feed_id)

    async def feed_ended(self, call_id: str, feed_id: str, *, actor: str | None = None) -> bool:
        """A feed of the call ended; the last one to end completes the call (as a media
        stream's stop does). True when no feed of the call is open any more."""
        if await self.intake.feed_ended(call_id, feed_id):
            return False
        await self.complete(call_id, actor=actor)
        return True

    async def complete(
        self,
        call_id: str,
        reason: str = "explicit",
        idle_cutoff: float | None = None,
        *,
        actor: str | None = None,
    ) -> Completion:
        """Complete the call exactly once, audited as `actor`'s, and queue its job; a completion
        whose enqueue fails stays in the pending index, where the reaper finds and enqueues it.
        Packets a transport of this process holds back for the call are stored first."""
        await self.held.store(call_id)
        try:
            outcome = await self.intake.complete(call_id, reason, idle_cutoff)
        except NotReplicated as short:
            # The completion may stand on the master: its job is then queued by the reaper.
            raise NotYetReplicated(_not_replicated_detail("completion", short)) from None
        if outcome is Completion.COMPLETED:
            metrics.count_completion(reason)
            audit("complete", call_id, actor)
            await self.enqueue(call_id)
        return outcome

    async def requeue(self, call_id: str, *, actor: str | None = None) -> None:
        """Queue a call's job again (a replayed dead letter, audited as `actor`'s), under the
        reaper's watch first so that a failed enqueue is retried."""
        audit("replay", call_id, actor)
        await self.intake.mark_replayed(call_id)
        await self.enqueue(call_id)


_CAP_SETTINGS = {CallCap.PACKETS: ("MAX_CALL_PACKETS", "packets"),
                 CallCap.BYTES: ("MAX_CALL_BYTES", "bytes of data")}  # fmt: skip


def _call_full_detail(full: CallFull) -> str:
    setting, unit = _CAP_SETTINGS[full.cap]
    return (
        f"call {full.call_id} holds {full.stored} {unit}; these packets would add {full.adding}, "
        f"past its cap of {full.limit} ({setting}); nothing of them was stored"
    )


def _not_replicated_detail(what: str, short: NotReplicated) -> str:
    return (
        f"the {what} reached Redis but only {short.confirmed} of {short.wanted} replicas "
        f"confirmed it (REDIS_WAIT_REPLICAS): it may be stored, but could be lost if its "
        f"master died now. Retry after Retry-After seconds; retrying is safe (a stored packet "
        f"is answered as a duplicate, a completed call as completed)"
    )
