"""Annotated dependencies: the single place that reads the lifespan state off the request."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Path, Request, WebSocket
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import Scope

from core.ingestion import CALL_ID_MAX_LENGTH, CALL_ID_PATTERN, CALL_ID_RULE, Ingestion
from service.bodies import check_body_encoding, refuse_duplicate_keys, require_json
from service.resources import ApiResources


async def get_resources(request: Request) -> ApiResources:
    res = request.state.resources
    assert isinstance(res, ApiResources)
    return res


ResourcesDep = Annotated[ApiResources, Depends(get_resources)]


def get_ws_resources(websocket: WebSocket) -> ApiResources:
    """The WebSocket twin of get_resources: the lifespan state of the connection."""
    res = websocket.state.resources
    assert isinstance(res, ApiResources)
    return res


def scope_resources(scope: Scope) -> ApiResources:
    """The same, for a bare ASGI endpoint (service/routes/media_ws.py): off the scope."""
    res = scope["state"]["resources"]
    assert isinstance(res, ApiResources)
    return res


def origin_allowed(scope: Scope, allowed: frozenset[str]) -> bool:
    """PBXs and programs send no Origin; a browser does, and may connect only from an origin
    allowed (WS_ALLOWED_ORIGINS): else any web page could open a socket to a loopback API."""
    origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
    return origin is None or origin.decode("latin-1") in allowed


async def get_ingestion(res: ResourcesDep) -> Ingestion:
    return res.ingestion


IngestionDep = Annotated[Ingestion, Depends(get_ingestion)]


async def get_session(res: ResourcesDep) -> AsyncIterator[AsyncSession]:
    async with res.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def json_body(
    request: Request,
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """The fast path's rules for a body, on the routes too: JSON (415 otherwise), UTF-8 without a
    byte order mark (400 otherwise), no key twice in an object (422). FastAPI has read it."""
    require_json(content_type)
    body = await request.body()
    check_body_encoding(body)
    refuse_duplicate_keys(body)


CallId = Annotated[
    str,
    Path(
        pattern=CALL_ID_PATTERN,
        max_length=CALL_ID_MAX_LENGTH,
        description=CALL_ID_RULE,
        examples=["call-42"],
    ),
]
