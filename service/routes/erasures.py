"""Erasure on request and the erasure ledger: DELETE /v1/calls/{call_id} and GET /v1/erasures.
The erasure itself runs in the workers (jobs/erasure.py); this module records it, audits it and
queues it (core/erasure.py), and answers where it stands."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from core import erasure
from core.errors import CallNotFound
from db import calls, erasures
from db.erasures import LedgerEntry, Reason, Scope
from db.forget import CallRedis
from db.redis_client import RedisClient
from jobs.queue import enqueue_erasure
from service.deps import CallId, ResourcesDep, SessionDep
from service.gate import actor_of
from service.schemas import INVALID_REQUEST, problem_response

router = APIRouter(tags=["privacy"])


class ErasurePage(BaseModel):
    items: list[LedgerEntry]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


@router.delete(
    "/v1/calls/{call_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=LedgerEntry,
    responses={
        204: {"description": "Erased: nothing of the call is left (a repeated DELETE too)."},
        404: problem_response("Unknown call (`call_not_found`)."),
        **INVALID_REQUEST,
    },
    summary="Erase a call and everything it left (202 while it runs, 204 once done)",
)
async def delete_call(
    call_id: CallId, res: ResourcesDep, session: SessionDep, request: Request
) -> Response:
    """Erases the call's audio (rows and objects), utterances, windows, transcript, sentiment,
    AI attempts, history, Redis keys and live-feed events, and records it in the ledger. From
    the first answer on, every read of the call is `404 call_erased` and packets for its id are
    refused; a live call is completed first. Idempotent."""
    if await erasures.erased(session, call_id) is None and not await _known(
        session, res.redis, call_id
    ):
        raise CallNotFound(f"call {call_id} is unknown")
    await session.close()
    entry = await erasure.ask(
        res.sessions,
        partial(enqueue_erasure, res.queue),
        res.ingestion,
        res.redis,
        call_id,
        Scope.CALL,
        Reason.REQUEST,
        actor_of(request.scope),
    )
    if entry.erased_at is not None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    body = entry.model_dump(mode="json")
    return JSONResponse(body, status_code=status.HTTP_202_ACCEPTED)


async def _known(session: AsyncSession, redis: RedisClient, call_id: str) -> bool:
    if await calls.get_call(session, call_id) is not None:
        return True
    return await CallRedis(redis).known(call_id)


@router.get(
    "/v1/erasures",
    response_model=ErasurePage,
    responses={**INVALID_REQUEST},
    summary="The erasure ledger (export it with `since` for a replay after a restore)",
)
async def get_erasures(
    session: SessionDep,
    since: Annotated[
        datetime | None,
        Query(
            description="Only the erasures not finished before this time (ISO 8601, with a "
            "zone; without one, UTC): what a backup taken then still holds. Unset: the whole "
            "ledger."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 500,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="`next_cursor` of the last page.")
    ] = None,
) -> ErasurePage:
    """In the order they were asked for; each row says what was erased, why, who asked and
    when; nothing of the call's content."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    found, after = await erasures.page(session, since, int(cursor or 0), limit)
    return ErasurePage(items=found, next_cursor=None if after is None else str(after))
