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

from http import HTTPStatus
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


PROBLEM_JSON = "application/problem+json"
# The longest list of problems a 422 carries: an invalid body of thousands of items must not get
# an answer several times its own size.
MAX_PROBLEMS = 20


def problem(status: int, code: str, detail: str, **extensions: Any) -> dict[str, Any]:
    """Every error answer, whatever the path that sends it: RFC 9457 problem details, with our
    stable `code` beside the standard members."""
    title = HTTPStatus(status).phrase
    return {"type": "about:blank", "title": title, "status": status, "detail": detail,
            "code": code, **extensions}  # fmt: skip


def error_body(status: int, code: str, detail: str, **extensions: Any) -> bytes:
    return orjson.dumps(problem(status, code, detail, **extensions))


# Not "nothing was stored": a timeout can hide a write that happened. Retrying is safe because
# a packet already stored is answered as a duplicate.
REDIS_DOWN = (
    "Redis is unavailable. Retry after Retry-After seconds; a packet that did get stored "
    "is answered as a duplicate, so retrying is safe."
)
POSTGRES_DOWN = "PostgreSQL is unavailable; retry shortly."
INTERNAL_ERROR = "Internal error; it has been logged."
