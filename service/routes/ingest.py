"""Packet ingestion and call completion: one Redis round trip each, never PostgreSQL or the AI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Response, status

from db.states import CallState
from db.streams import CallCompleted, PacketResult
from jobs.queue import enqueue_process_call
from service.answers import batch_answer, packet_answer
from service.deps import CallId, ResourcesDep, SessionDep
from service.errors import CallAlreadyCompleted, CallNotFound, PayloadTooLarge
from service.resources import ApiResources
from service.schemas import (
    INVALID_REQUEST,
    BatchAccepted,
    BatchIn,
    CompleteResponse,
    ErrorBody,
    PacketAccepted,
    PacketIn,
)
from service.views import call_status

PREFIX = "/v1/call"
router = APIRouter(prefix=PREFIX, tags=["ingestion"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body is not readable text; nothing stored."},
    409: {"model": ErrorBody, "description": "The call is already completed; nothing stored."},
    413: {"model": ErrorBody, "description": "A packet's data exceeds MAX_PACKET_DATA_BYTES."},
    **INVALID_REQUEST,
    503: {"model": ErrorBody, "description": "Redis unavailable; retry after Retry-After."},
}


def _check_size(packets: Sequence[PacketIn], limit: int) -> None:
    for p in packets:
        # len(str) <= bytes <= 4 * len(str): encode only when the answer is not already known.
        if len(p.data) > limit or (len(p.data) * 4 > limit and len(p.data.encode()) > limit):
            raise PayloadTooLarge(
                f"packet {p.sequence}: data is larger than {limit} bytes (MAX_PACKET_DATA_BYTES)"
            )


async def append_packets(
    res: ApiResources, call_id: str, packets: Sequence[PacketIn]
) -> list[PacketResult]:
    _check_size(packets, res.settings.max_packet_data_bytes)
    try:
        return await res.streams.append(call_id, packets)
    except CallCompleted:
        raise CallAlreadyCompleted(
            f"call {call_id} is already completed; packets are no longer accepted"
        ) from None


@router.post(
    "/stream/{call_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PacketAccepted,
    responses={
        200: {"model": PacketAccepted, "description": "Duplicate: already stored."},
        **_ERRORS,
    },
    summary="Ingest one packet",
)
async def ingest_packet(
    call_id: CallId, packet: PacketIn, res: ResourcesDep, response: Response
) -> PacketAccepted:
    """202 for a new packet once Redis has it; 200 with `duplicate: true` for a repeat."""
    (result,) = await append_packets(res, call_id, [packet])
    if result.duplicate:
        response.status_code = status.HTTP_200_OK
    return PacketAccepted.model_validate(packet_answer(call_id, result))


@router.post(
    "/stream/{call_id}/batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchAccepted,
    responses=_ERRORS,
    summary="Ingest many packets of one call in one request",
)
async def ingest_batch(call_id: CallId, batch: BatchIn, res: ResourcesDep) -> BatchAccepted:
    """Same rules per packet as the single endpoint, one Redis round trip for the whole batch."""
    return BatchAccepted.model_validate(await append_batch(res, call_id, batch))


async def append_batch(res: ApiResources, call_id: str, batch: BatchIn) -> dict[str, Any]:
    limit = res.settings.max_batch_packets
    if len(batch.packets) > limit:
        raise PayloadTooLarge(f"a batch holds at most {limit} packets (MAX_BATCH_PACKETS)")
    return batch_answer(call_id, await append_packets(res, call_id, batch.packets))


@router.post(
    "/complete/{call_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CompleteResponse,
    responses={
        200: {"model": CompleteResponse, "description": "Already completed: the current state."},
        404: {"model": ErrorBody, "description": "No packet was ever received for this call."},
        503: {"model": ErrorBody, "description": "Redis unavailable; retry after Retry-After."},
        **INVALID_REQUEST,
    },
    summary="Signal the end of a call",
)
async def complete_call(
    call_id: CallId, res: ResourcesDep, session: SessionDep, response: Response
) -> CompleteResponse:
    """The first request completes the call and queues its AI job (202); later ones get 200."""
    outcome = await res.streams.complete(call_id, "explicit")
    if outcome == "completed":
        await enqueue_process_call(res.redis, call_id)
        return CompleteResponse(call_id=call_id, state=CallState.COMPLETED.value)
    current = await call_status(session, res.streams, call_id, missing_cap=0)
    if current is None:
        raise CallNotFound(f"call {call_id} has never sent a packet")
    response.status_code = status.HTTP_200_OK
    return CompleteResponse(call_id=call_id, state=current.state)
