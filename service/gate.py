"""The API's outermost layer: who may come in, decided from the path and the headers before any
body is read, for every path (the fast path and the WebSocket included: they sit behind it).
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
    is_loopback,
    presented_key,
    rule_for,
)
from core.errors import BodyTooLarge, CallstreamError, Forbidden, RateLimited
from service.asgi import CLOSE_POLICY, AppLayer, send_error
from service.bodies import check_body_size
from service.resources import ApiResources

log = logging.getLogger(__name__)

PRINCIPAL = "callstream.principal"  # scope key: the caller, once known
KEY_IN_START = "callstream.key_in_start"  # scope key: a media stream that sends its key in `start`
LOOPBACK_ONLY = (
    "Callstream has no API keys configured, so it serves clients on this machine only. "
    f"Set {KEY_VARIABLES} to serve others."
)


class AccessGate(AppLayer):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "state" not in scope:
            await self.app(scope, receive, send)
            return
        res: ApiResources = scope["state"]["resources"]
        try:
            needed = self._admit(scope, res.keys)
            if scope["type"] == "http":
                await _within_rate(scope, res, needed)
                declared = _content_length(scope)
                check_body_size(declared, res.settings.max_body_bytes)
                if declared is None:  # chunked: the server stops at a declared length itself
                    receive = _capped(receive, res.settings.max_body_bytes)
        except CallstreamError as refused:
            await _refuse(scope, send, refused)
            return
        # A body cut off later (BodyTooLarge from `receive`) is answered by whoever reads it:
        # FastAPI's handlers, or the fast path's own.
        await self.app(scope, receive, send)

    def _admit(self, scope: Scope, keys: KeyRing) -> Role | None:
        """Mark the scope with its principal, or raise the 401/403 it gets. Returns the role
        the endpoint needs (None: open)."""
        websocket = scope["type"] == "websocket"
        rule = rule_for("WEBSOCKET" if websocket else scope["method"], scope["path"])
        if rule is not None and rule.role is OPEN:
            return OPEN
        needed = rule.role if rule is not None and rule.role is not None else ANY_KEY
        if not keys.enabled:
            client = scope.get("client")
            if not is_loopback(client[0] if client else None):
                raise Forbidden(LOOPBACK_ONLY)
            return needed
        presented = presented_key(scope["headers"])
        if websocket and presented is None and rule is not None:
            # Twilio's <Stream> cannot set headers: its key comes in start.customParameters.
            scope[KEY_IN_START] = True
            return needed
        scope[PRINCIPAL] = keys.authorize(presented, needed)
        return needed


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
        # Closing before accepting refuses the handshake (HTTP 403 to the client).
        await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": refused.code})
        return
    await send_error(send, refused)
