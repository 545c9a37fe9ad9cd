"""What the two bare-ASGI layers in front of the FastAPI app (service/gate.py, service/fastpath.py)
share: delegation to the app behind them and the raw answers they send; and the WebSocket close
codes (RFC 6455) that the gate and the WebSocket routes close with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Send

from core.errors import PROBLEM_JSON, CallstreamError
from service.errors import answer_body

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008  # a policy violation; before the handshake, the client sees HTTP 403
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # a retryable failure: the client may reconnect later

JSON_HEADERS = [(b"content-type", b"application/json")]
_PROBLEM_HEADERS = [(b"content-type", PROBLEM_JSON.encode())]


class AppLayer:
    """A bare ASGI layer around the app: `app` answers whatever the layer passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        # Whoever holds `service.app:app` still sees the FastAPI app behind every layer
        # (openapi(), routes, dependency_overrides, state...).
        return getattr(self.app, name)


async def send_answer(
    send: Send, status: int, body: bytes, head: list[tuple[bytes, bytes]] = JSON_HEADERS
) -> None:
    headers: list[Any] = [*head, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_problem(
    send: Send, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> None:
    """An error answer in the one format (service/errors.py answer_body), as FastAPI's handlers
    send it: these layers are outside FastAPI's error middleware."""
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    body = answer_body(status, code, detail)
    await send_answer(send, status, body, [*_PROBLEM_HEADERS, *extra])


async def send_error(send: Send, error: CallstreamError) -> None:
    await send_problem(send, error.status_code, error.code, error.detail, error.headers)
