"""Annotated dependencies: the single place that reads the lifespan state off the request."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.resources import ApiResources
from service.schemas import CALL_ID_PATTERN


async def get_resources(request: Request) -> ApiResources:
    res = request.state.resources
    assert isinstance(res, ApiResources)
    return res


ResourcesDep = Annotated[ApiResources, Depends(get_resources)]


async def get_session(res: ResourcesDep) -> AsyncIterator[AsyncSession]:
    async with res.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]

CallId = Annotated[
    str,
    Path(
        pattern=CALL_ID_PATTERN,
        description="1-128 characters of A-Z a-z 0-9 . _ : -",
        examples=["call-42"],
    ),
]
