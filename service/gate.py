"""The API's outermost layer: who may come in, decided from the path and the headers before any
body is read, for every path (the fast path and the WebSockets included: they sit behind it).
A WebSocket is refused at its handshake like a request (its 401/403/421/429 is the HTTP answer
to the handshake), but for a feed whose protocol cannot send headers (core/access.py's
`key_in_first_message`), whose transport checks the key of its first message. Sockets and event
streams hold a slot of their key's (service/socket_limits.py) while they are open.
The rules are core/access.py's; this file only applies them to ASGI requests."""

from __future__ import annotations

import logging
import math

from starlette.types import Message, Receive, Scope, Send

from core.access import (
    ANY_KEY,
    KEY_VARIABLES,
    OPEN,
    KeyRing,
    Principal,
    Role,
    Rule,
    cross_site_write,
    host_is_loopback,
    is_loopback,
    presented_key,
    rule_for,
)
from core.errors import BodyTooLarge, CallstreamError, Forbidden, HostNotServed, RateLimited
from service.asgi import CLOSE_POLICY, AppLayer, send_error
from service.bodies import check_body_size
from service.resources import ApiResources
from service.socket_limits import SocketSlot

log = logging.getLogger(__name__)

PRINCIPAL = "callstream.principal"  # scope key: the caller, once known
KEY_IN_START = "callstream.key_in_start"  # scope key: a media stream that sends its key in `start`
LOOPBACK_ONLY = (
    "Callstream has no API keys configured, so it serves clients on this machine only. "
    f"Set {KEY_VARIABLES} to serve others."
)
HOST_NOT_SERVED = (
    "Callstream has no API keys configured, so it answers only requests addressed to this "
    "machine (Host: localhost, 127.0.0.1 or [::1], any port). Set "
    f"{KEY_VARIABLES} to serve other names."
)
CROSS_SITE = (
    "Callstream has no API keys configured, so it refuses writes sent by a web page of another "
    f"site (Origin / Sec-Fetch-Site). Set {KEY_VARIABLES} to serve other clients."
)


class AccessGate(AppLayer):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "state" not in scope:
            await self.app(scope, receive, send)
            return
        res: ApiResources = scope["state"]["resources"]
        slot: SocketSlot | None = None
        try:
            rule = rule_for(_method(scope), scope["path"])
            needed = self._admit(scope, res.keys, rule)
            if scope["type"] == "http":
                await _within_rate(scope, res, needed)
                declared = _content_length(scope)
                check_body_size(declared, res.settings.max_body_bytes)
                if declared is None:  # chunked: the server stops at a declared length itself
                    receive = _capped(receive, res.settings.max_body_bytes)
            principal: Principal | None = scope.get(PRINCIPAL)
            if principal is not None and rule is not None and rule.long_lived:
                slot = await res.sockets.admit(principal)
        except CallstreamError as refused:
            await _refuse(scope, send, refused)
            return
        # A body cut off later (BodyTooLarge from `receive`) is answered by whoever reads it:
        # FastAPI's handlers, or the fast path's own.
        try:
            await self.app(scope, receive, send)
        finally:
            if slot is not None:
                slot.release()

    def _admit(self, scope: Scope, keys: KeyRing, rule: Rule | None) -> Role | None:
        """Mark the scope with its principal, or raise the 401/403/421 it gets. Returns the
        role the endpoint needs (None: open)."""
        if rule is not None and rule.role is OPEN:
            return OPEN
        needed = rule.role if rule is not None and rule.role is not None else ANY_KEY
        if not keys.enabled:
            _only_this_machine(scope)
            return needed
        presented = presented_key(scope["headers"])
        if presented is None and rule is not None and rule.key_in_first_message:
            # Twilio's <Stream> cannot set headers: its key comes in start.customParameters,
            # within WS_START_TIMEOUT_S (service/routes/media_ws.py).
            scope[KEY_IN_START] = True
            return needed
        scope[PRINCIPAL] = keys.authorize(presented, needed)
        return needed


def _method(scope: Scope) -> str:
    return "WEBSOCKET" if scope["type"] == "websocket" else str(scope["method"])


def _only_this_machine(scope: Scope) -> None:
    """Without keys: a loopback peer (403), addressing this machine by name (421: a page that
    rebinds its DNS name to 127.0.0.1 still sends its own name as Host), and no cross-site
    write (403)."""
    client = scope.get("client")
    if not is_loopback(client[0] if client else None):
        raise Forbidden(LOOPBACK_ONLY)
    if not host_is_loopback(_header(scope, b"host")):
        raise HostNotServed(HOST_NOT_SERVED)
    # A socket's Origin is the WebSocket routes' own check (WS_ALLOWED_ORIGINS).
    if scope["type"] == "http" and cross_site_write(
        scope["method"], _header(scope, b"origin"), _header(scope, b"sec-fetch-site")
    ):
        raise Forbidden(CROSS_SITE)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def actor_of(scope: Scope) -> str:
    """Who the audit trail names for this request: the API key's id, never the key."""
    principal: Principal | None = scope.get(PRINCIPAL)
    if principal is not None:
        return f"key:{principal.key_id}"
    return "websocket-start-key" if scope.get(KEY_IN_START) else "loopback-without-keys"


async def _within_rate(scope: Scope, res: ApiResources, needed: Role | None) -> None:
    """429 past the key's rate: reads by READ_RATE_LIMIT, ingestion by INGEST_RATE_LIMIT."""
    principal: Principal | None = scope.get(PRINCIPAL)
    if principal is None or needed is None:
        return
    ingest = needed is Role.INGEST
    per_second = res.settings.ingest_rate_limit if ingest else res.settings.read_rate_limit
    if per_second <= 0:
        return
    bucket = f"{principal.key_id}:{'ingest' if ingest else 'read'}"
    wait_s = await res.rate_limits.hit(bucket, per_second)
    if wait_s is not None:
        raise RateLimited(
            f"this key may send {per_second} requests a second here; retry after Retry-After",
            {"Retry-After": str(max(1, math.ceil(wait_s)))},
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _capped(receive: Receive, limit: int) -> Receive:
    """`receive` that stops reading a body (chunked, or lying about its length) at the first
    chunk past `limit`: the app gets BodyTooLarge, answered 413."""
    read = 0

    async def capped() -> Message:
        nonlocal read
        message = await receive()
        if message["type"] == "http.request":
            read += len(message.get("body", b""))
            if read > limit:
                raise BodyTooLarge(f"the body is larger than {limit} bytes (MAX_BODY_BYTES)")
        return message

    return capped


async def _refuse(scope: Scope, send: Send, refused: CallstreamError) -> None:
    if scope["type"] == "websocket":
        if "websocket.http.response" in scope.get("extensions", {}):
            # The handshake's answer is the refusal itself: 401, 403, 421 or 429 with its body.
            await send_error(send, refused, websocket=True)
        else:
            # A server without the extension: closing before accepting refuses the handshake
            # (HTTP 403 to the client).
            await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": refused.code})
        return
    await send_error(send, refused)
