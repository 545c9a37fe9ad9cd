"""What the two bare-ASGI layers in front of the FastAPI app (service/gate.py, service/fastpath.py)
share: delegation to the app behind them and the raw answers they send; and the WebSocket close
codes (RFC 6455) that the gate and the WebSocket routes close with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from starlette.types import ASGIApp, Send

from core.errors import PROBLEM_JSON, CallstreamError
from service.errors import answer_body

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008  # a policy violation; before the handshake, the client sees HTTP 403
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # a retryable refusal (core/errors.py `retryable`): reconnect later

# The ASGI extension of service/ws_protocol.py: a socket's whole messages handed to the app as
# they are read (TextSink, BinarySink), for an app that holds them anyway: the media stream's
# text frames, a PBX feed's binary audio. scope["extensions"][FRAME_SINK] is
# {"sinks": FrameSinks}, the socket's protocol; absent under any other server.
FRAME_SINK = "callstream.frame_sink"


class TextSink(Protocol):
    """Takes a text message as it is read (True), or declines it (False: it is queued for the
    app's `receive` as usual). Called from the protocol's data_received: it must not block,
    and it must not raise (a message that is wrong is declined, so that the app meets it in
    its own `receive` and answers it there)."""

    def __call__(self, text: str) -> bool: ...


class BinarySink(Protocol):
    """A TextSink's twin for binary messages (the same rules)."""

    def __call__(self, data: bytes) -> bool: ...


class FrameSinks(Protocol):
    """What `scope["extensions"][FRAME_SINK]` is: the socket's protocol."""

    def attach(
        self,
        sink: TextSink | None,
        hold_until: Callable[[], float | None] | None = None,
        binary: BinarySink | None = None,
    ) -> None: ...

    def reopen(self) -> None: ...

    async def caught_up(self) -> None: ...


def frame_sinks(scope: Mapping[str, Any]) -> FrameSinks | None:
    """The socket's FrameSinks, under a server that has them (service/ws_protocol.py)."""
    extension = scope.get("extensions", {}).get(FRAME_SINK)
    return extension["sinks"] if extension else None


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
    send: Send,
    status: int,
    body: bytes,
    head: list[tuple[bytes, bytes]] = JSON_HEADERS,
    *,
    websocket: bool = False,
) -> None:
    """An HTTP answer; `websocket`: as the refusal of a WebSocket handshake (the ASGI
    `websocket.http.response` extension), which a client sees as that HTTP answer."""
    kind = "websocket.http.response" if websocket else "http.response"
    headers: list[Any] = [*head, (b"content-length", str(len(body)).encode())]
    await send({"type": f"{kind}.start", "status": status, "headers": headers})
    await send({"type": f"{kind}.body", "body": body})


async def send_problem(
    send: Send,
    status: int,
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    *,
    websocket: bool = False,
) -> None:
    """An error answer in the one format (service/errors.py answer_body), as FastAPI's handlers
    send it: these layers are outside FastAPI's error middleware."""
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    body = answer_body(status, code, detail)
    await send_answer(send, status, body, [*_PROBLEM_HEADERS, *extra], websocket=websocket)


async def send_error(send: Send, error: CallstreamError, *, websocket: bool = False) -> None:
    await send_problem(
        send, error.status_code, error.code, error.detail, error.headers, websocket=websocket
    )
