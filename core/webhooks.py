"""Standard Webhooks (https://www.standardwebhooks.com): the secret's form, the signature and the
headers of a delivery. Pure functions, no I/O: the workers send (jobs/webhooks.py).

Signed with hmac rather than the `standardwebhooks` package: the scheme is one HMAC-SHA256, and
the package is kept for the other side, the receivers' verifier that the tests use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The key of a `whsec_<base64>` secret; ValueError saying what is wrong with it."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("WEBHOOK_SECRET must be whsec_ followed by base64 (Standard Webhooks)")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("WEBHOOK_SECRET: what follows whsec_ is not base64") from None
    if len(key) < 24:
        raise ValueError("WEBHOOK_SECRET: the key must be 24 to 64 bytes (32 is usual)")
    if len(key) > 64:
        raise ValueError("WEBHOOK_SECRET: the key must be 24 to 64 bytes (32 is usual)")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt: its id is the event's on every retry, its timestamp the
    attempt's own (receivers refuse a stale one)."""
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, message_id, timestamp, body),
    }
