"""The webhooks' dead letters, for an admin: GET /v1/webhooks/deliveries lists deliveries (by
state: `failed` are the dead letters), POST /v1/webhooks/deliveries/{id}/retry sends one again.
The workers deliver (jobs/webhooks.py); docs/webhooks.md tells the whole story."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, status
from pydantic import BaseModel, Field

from core.errors import DeliveryNotFailed, DeliveryNotFound
from db import deliveries
from service.deps import SessionDep
from service.schemas import INVALID_REQUEST, problem_response

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

# A delivery's id is a bigint: a larger number is answered 422, not a database error.
_MAX_ID = 2**63 - 1


class AttemptRecord(BaseModel):
    at: datetime
    status: int | None = Field(description="The endpoint's HTTP status; null: no answer.")
    error: str | None = Field(description="Why the attempt failed (non-2xx, timeout, network).")


class DeliveryOut(BaseModel):
    id: int
    event_id: str = Field(description="The `webhook-id` header of every attempt.")
    event: str = Field(description="call.completed, call.archived or call.failed.")
    call_id: str
    endpoint: str
    state: Literal["pending", "delivered", "failed"]
    occurred_at: datetime = Field(description="The event's time (the body's `timestamp`).")
    attempts: list[AttemptRecord]
    next_attempt_at: datetime | None = Field(description="When a pending one is tried next.")
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page.")


class RetryAccepted(BaseModel):
    id: int
    state: Literal["pending"] = "pending"


def _out(d: deliveries.Delivery) -> DeliveryOut:
    attempts: list[Any] = d.attempts
    return DeliveryOut(
        id=d.id,
        event_id=d.event_id,
        event=d.event_type,
        call_id=d.call_id,
        endpoint=d.endpoint,
        state=d.state,
        occurred_at=d.occurred_at,
        attempts=[AttemptRecord.model_validate(a) for a in attempts],
        next_attempt_at=d.next_at,
        delivered_at=d.delivered_at,
    )


@router.get(
    "/deliveries",
    response_model=DeliveryPage,
    responses={**INVALID_REQUEST},
    summary="Webhook deliveries, newest first: `state=failed` lists the dead letters (admin)",
)
async def list_deliveries(
    session: SessionDep,
    state: Annotated[
        Literal["pending", "delivered", "failed"] | None,
        Query(description="Only deliveries in this state; `failed`: the dead letters."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=_MAX_ID, description="`next_before` of the previous page.")
    ] = None,
) -> DeliveryPage:
    conn = await session.connection()
    found = await deliveries.list_deliveries(conn, state, before, limit + 1)
    page = found[:limit]
    return DeliveryPage(
        items=[_out(d) for d in page],
        next_before=page[-1].id if len(found) > limit else None,
    )


@router.post(
    "/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RetryAccepted,
    responses={
        404: problem_response("No delivery has this id."),
        409: problem_response("The delivery is not failed (it is pending or delivered)."),
        **INVALID_REQUEST,
    },
    summary="Send a dead letter once more (admin): one attempt, at once, with the same id",
)
async def retry_delivery(
    delivery_id: Annotated[int, Path(ge=1, le=_MAX_ID)], session: SessionDep
) -> RetryAccepted:
    async with session.begin():
        before = await deliveries.retry_failed(await session.connection(), delivery_id)
    if before is None:
        raise DeliveryNotFound(f"webhook delivery {delivery_id} is unknown")
    if before != "failed":
        raise DeliveryNotFailed(
            f"webhook delivery {delivery_id} is {before}; only a failed one is sent again"
        )
    return RetryAccepted(id=delivery_id)
