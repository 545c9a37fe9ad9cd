"""Errors a client caused, each with its HTTP status and a stable code, and the one error body.

CallstreamError            carries its HTTP status and a stable code
├── CallNotFound           404: no packet was ever received for the call
├── CallAlreadyCompleted   409: the call is completed, packets are refused
├── CallNotFailed          409: only FAILED calls can be replayed
├── PayloadTooLarge        413: a packet's data or a batch is too large
│   └── MetadataTooLarge   413: a media stream's start message is too large
└── UnsupportedMediaType   415: the body is declared as something other than JSON
"""

from __future__ import annotations

from typing import Any

import orjson


class CallstreamError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class CallNotFound(CallstreamError):
    status_code = 404
    code = "call_not_found"


class CallAlreadyCompleted(CallstreamError):
    status_code = 409
    code = "call_completed"


class CallNotFailed(CallstreamError):
    status_code = 409
    code = "call_not_failed"


class PayloadTooLarge(CallstreamError):
    status_code = 413
    code = "payload_too_large"


class MetadataTooLarge(PayloadTooLarge):
    code = "metadata_too_large"


class UnsupportedMediaType(CallstreamError):
    status_code = 415
    code = "unsupported_media_type"


def error_body(code: str, detail: Any) -> bytes:
    """Every error answer, whatever the path that sends it: {"detail": ..., "code": ...}."""
    return orjson.dumps({"detail": detail, "code": code})


# Not "nothing was stored": a timeout can hide a write that happened. Retrying is safe because
# a packet already stored is answered as a duplicate.
REDIS_DOWN = (
    "Redis is unavailable. Retry after Retry-After seconds; a packet that did get stored "
    "is answered as a duplicate, so retrying is safe."
)
POSTGRES_DOWN = "PostgreSQL is unavailable; retry shortly."
INTERNAL_ERROR = "Internal error; it has been logged."
