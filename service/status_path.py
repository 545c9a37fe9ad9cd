"""`GET /v1/calls/{call_id}` as a bare ASGI layer in front of the FastAPI app.

A supervisor's dashboard, a PBX's poller or a load test reads every live call's status about
once a second, so this read is the API's most frequent request after the frames. Through
FastAPI (its middleware stack, routing, dependency resolution, a Response's headers) it cost the
API about 2.5 ms of CPU on a 2-core EPYC, several times the read itself (BENCHMARKS.md, issue 27).

This layer answers the plain form: no query string, at most one If-None-Match. The answer is
the route's own (service/routes/calls.py `status_body`, service/conditional.py `answer`: the
same body, ETag and 304), and a domain error (unknown, erased) is sent as FastAPI's handler
sends it. Everything else goes to FastAPI untouched: `?wait=` (long polling), anything invalid
(its 422), and a read that failed otherwise (an outage), which FastAPI reads again and answers
from its one set of handlers.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from core.errors import CallstreamError
from core.ingestion import is_call_id
from service.asgi import AppLayer, send_error
from service.conditional import answer, parse_if_none_match
from service.resources import ApiResources
from service.routes.calls import router, status_body

STATUS_PATH = f"{router.prefix}/"


class StatusFastPath(AppLayer):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = _status_target(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        call_id, if_none_match = target
        res: ApiResources = scope["state"]["resources"]
        try:
            body = await status_body(res, call_id)
        except CallstreamError as error:
            await send_error(send, error)
            return
        except Exception:  # FastAPI's handlers answer it (see the module's doc)
            await self.app(scope, receive, send)
            return
        await answer(body, parse_if_none_match(if_none_match))(scope, receive, send)


def _status_target(scope: Scope) -> tuple[str, str | None] | None:
    """(call id, its If-None-Match) for the requests this layer answers; None for the rest."""
    if (
        scope["type"] != "http"
        or scope["method"] != "GET"
        or scope["query_string"]
        or "state" not in scope
    ):
        return None
    path: str = scope["path"]
    if not path.startswith(STATUS_PATH):
        return None
    call_id = path[len(STATUS_PATH) :]
    if not is_call_id(call_id):
        return None
    tags = [v for k, v in scope["headers"] if k == b"if-none-match"]
    if len(tags) > 1:
        return None  # FastAPI's reading of a repeated header, not a second one here
    return call_id, tags[0].decode("latin-1") if tags else None
