"""Packet ingestion and call completion over FastAPI: thin adapters over core/ingestion.py.
Single packets and batches are usually answered by the fast path (service/fastpath.py) first;
these routes answer what it hands over and document the contract in /docs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response, status

from core.errors import CallNotFound
from db.intake import Completion
from db.states import CallState
from service.deps import CallId, IngestionDep, ResourcesDep, SessionDep, json_body
from service.gate import actor_of
from service.schemas import (
    INVALID_REQUEST,
    BatchAccepted,
    BatchIn,
    CompleteResponse,
    PacketAccepted,
    PacketIn,
    problem_response,
)
from service.views import call_status

PREFIX = "/v1/call"
STREAM_PATH = f"{PREFIX}/stream/"
COMPLETE_PATH = f"{PREFIX}/complete/"
BATCH_SUFFIX = "/batch"
# An undeclared body is read as JSON, as on the fast path (service.bodies.is_json); a body
# declared as anything else is refused with 415 by `json_body`.
router = APIRouter(prefix=PREFIX, tags=["ingestion"], strict_content_type=False)

_REDIS_DOWN: dict[int | str, dict[str, Any]] = {
    503: problem_response("Redis unavailable; retry after Retry-After.")
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: problem_response("The body is not readable text; nothing stored."),
    409: problem_response("The call is already completed; nothing stored."),
    413: problem_response("A packet's data exceeds MAX_PACKET_DATA_BYTES."),
    415: problem_response("The body is declared as something other than JSON."),
    **INVALID_REQUEST,
    **_REDIS_DOWN,
}


@router.post(
    "/stream/{call_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PacketAccepted,
    responses={
        200: {"model": PacketAccepted, "description": "Duplicate: already stored."},
        **_ERRORS,
    },
    dependencies=[Depends(json_body)],
    summary="Ingest one packet",
)
async def ingest_packet(
    call_id: CallId, packet: PacketIn, ingestion: IngestionDep, response: Response
) -> PacketAccepted:
    """202 for a new packet once Redis has it; 200 with `duplicate: true` for a repeat."""
    response.status_code, answer = await ingestion.packet(call_id, packet)
    return PacketAccepted.model_validate(answer)


@router.post(
    "/stream/{call_id}/batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchAccepted,
    responses=_ERRORS,
    dependencies=[Depends(json_body)],
    summary="Ingest many packets of one call in one request",
)
async def ingest_batch(call_id: CallId, batch: BatchIn, ingestion: IngestionDep) -> BatchAccepted:
    """Same rules per packet as the single endpoint, one Redis round trip for the whole batch."""
    return BatchAccepted.model_validate(await ingestion.batch(call_id, batch.packets))


@router.post(
    "/complete/{call_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CompleteResponse,
    responses={
        200: {"model": CompleteResponse, "description": "Already completed: the current state."},
        404: problem_response("No packet was ever received for this call."),
        **_REDIS_DOWN,
        **INVALID_REQUEST,
    },
    summary="Signal the end of a call",
)
async def complete_call(
    call_id: CallId, res: ResourcesDep, session: SessionDep, request: Request, response: Response
) -> CompleteResponse:
    """The first request completes the call and queues its AI job (202); later ones get 200."""
    if await res.ingestion.complete(call_id, actor=actor_of(request.scope)) is Completion.COMPLETED:
        return CompleteResponse(call_id=call_id, state=CallState.COMPLETED.value)
    current = await call_status(session, res.live, call_id, missing_cap=0)
    if current is None:
        raise CallNotFound(f"call {call_id} has never sent a packet")
    response.status_code = status.HTTP_200_OK
    return CompleteResponse(call_id=call_id, state=current.state)
