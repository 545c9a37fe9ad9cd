"""Annotated dependencies: the single place that reads the lifespan state off the request."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from core.ingestion import CALL_ID_PATTERN, CALL_ID_RULE, Ingestion, require_json
from service.resources import ApiResources


async def get_resources(request: Request) -> ApiResources:
    res = request.state.resources
    assert isinstance(res, ApiResources)
    return res


ResourcesDep = Annotated[ApiResources, Depends(get_resources)]


async def get_ingestion(res: ResourcesDep) -> Ingestion:
    return res.ingestion


IngestionDep = Annotated[Ingestion, Depends(get_ingestion)]


async def get_session(res: ResourcesDep) -> AsyncIterator[AsyncSession]:
    async with res.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def json_body(
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """Refuse a body declared as something other than JSON (415) before reading it."""
    require_json(content_type)


CallId = Annotated[
    str,
    Path(pattern=CALL_ID_PATTERN, description=CALL_ID_RULE, examples=["call-42"]),
]
