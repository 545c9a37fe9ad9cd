"""Errors a client caused, each with its HTTP status and a stable code, and the one error body.

CallstreamError            carries its HTTP status and a stable code
├── UnreadableBody         400: the body is not UTF-8 JSON text
├── CallNotFound           404: no packet was ever received for the call
├── CallErased             404: the call was erased (on request, or by retention)
├── AudioErased            404: the call's recording was erased (AUDIO_RETENTION_DAYS)
├── CallAlreadyCompleted   409: the call is completed, packets are refused
├── CallNotFailed          409: only FAILED calls can be replayed
├── DeliveryNotFound       404: no webhook delivery has this id
├── DeliveryNotFailed      409: only a failed delivery (a dead letter) is sent again
├── Unauthenticated        401: no API key, or one we do not know
├── Forbidden              403: the key's role does not allow this
├── PayloadTooLarge        413: a body, a packet's data or a batch is too large
│   ├── BodyTooLarge       413: a request body past MAX_BODY_BYTES
│   ├── CallTooLarge       413: the packets would take the call past its caps
│   └── MetadataTooLarge   413: a media stream's start message is too large
├── NotAcceptable          406: the Accept header names no format the resource has
├── UnsupportedMediaType   415: the body is declared as something other than JSON
├── HostNotServed          421: without keys, a Host that does not name this machine
├── RateLimited            429: this key sent more than its rate (with Retry-After)
├── Overloaded             503: too many completed calls wait: new calls refused for now
├── NotYetReplicated       503: too few replicas confirmed the write (REDIS_WAIT_REPLICAS)
├── RedisUnavailable       503: Redis is unreachable (what every transport makes of an outage)
├── InvalidText            422: text that cannot be stored (a NUL character, a lone surrogate)
└── DuplicateKey           422: a JSON object names a key twice

`retryable` marks the errors that say "not now" rather than "not this": the same request may
succeed later (the HTTP answer's Retry-After, the media socket's close 1013).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

import orjson


class CallstreamError(Exception):
    status_code = 400
    code = "bad_request"
    default_headers: ClassVar[dict[str, str]] = {}  # sent with every answer of the class
    retryable: ClassVar[bool] = False  # the same request may succeed later

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = {**self.default_headers, **(headers or {})}


class UnreadableBody(CallstreamError):
    code = "bad_request"


class Unauthenticated(CallstreamError):
    status_code = 401
    code = "unauthenticated"
    default_headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="callstream"'}


class Forbidden(CallstreamError):
    status_code = 403
    code = "forbidden"


class CallNotFound(CallstreamError):
    status_code = 404
    code = "call_not_found"


class CallErased(CallstreamError):
    """Every read of an erased call, from the moment its erasure was asked for."""

    status_code = 404
    code = "call_erased"


class AudioErased(CallstreamError):
    status_code = 404
    code = "audio_erased"


class CallAlreadyCompleted(CallstreamError):
    status_code = 409
    code = "call_completed"


class CallNotFailed(CallstreamError):
    status_code = 409
    code = "call_not_failed"


class DeliveryNotFound(CallstreamError):
    status_code = 404
    code = "delivery_not_found"


class DeliveryNotFailed(CallstreamError):
    status_code = 409
    code = "delivery_not_failed"


class NoAudio(CallstreamError):
    """The call's packets are not audio in its format (text, or undecodable): no recording."""

    status_code = 409
    code = "no_audio"


class RangeNotSatisfiable(CallstreamError):
    status_code = 416
    code = "range_not_satisfiable"


class PayloadTooLarge(CallstreamError):
    status_code = 413
    code = "payload_too_large"


class BodyTooLarge(PayloadTooLarge):
    """Raised while reading too, after the first bytes past the limit."""


class CallTooLarge(PayloadTooLarge):
    code = "call_too_large"


class MetadataTooLarge(PayloadTooLarge):
    code = "metadata_too_large"


class HostNotServed(CallstreamError):
    """Without keys Callstream serves this machine only: a Host naming another (a page that
    rebound its DNS name to 127.0.0.1) is misdirected here."""

    status_code = 421
    code = "host_not_served"


class RateLimited(CallstreamError):
    status_code = 429
    code = "rate_limited"
    retryable = True


class Overloaded(CallstreamError):
    status_code = 503
    code = "backlog_full"
    retryable = True


class FlushBehind(CallstreamError):
    """The call's unflushed tail in Redis is at its bound (TAIL_MAX_SEGMENTS): the worker has not
    stored it yet. Nothing of the request was stored; the same packets may be sent again."""

    status_code = 503
    code = "flush_behind"
    retryable = True


class NotYetReplicated(CallstreamError):
    """The write may be on the master but is not yet safe from its death; a retry is safe."""

    status_code = 503
    code = "not_replicated"
    retryable = True
    default_headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


# Not "nothing was stored": a timeout can hide a write that happened. Retrying is safe because
# a packet already stored is answered as a duplicate.
REDIS_DOWN = (
    "Redis is unavailable. Retry after Retry-After seconds; a packet that did get stored "
    "is answered as a duplicate, so retrying is safe."
)

# What a media socket that lost Redis may say: it acknowledges no frame, and a frame in flight
# may or may not have been stored.
REDIS_DOWN_STREAM = (
    "Redis is unavailable: the frames since the last one stored may not have been stored. "
    "Reconnect and send them again; a frame already stored is counted as a duplicate."
)


class RedisUnavailable(CallstreamError):
    """A Redis outage (db/outages.py REDIS_OUTAGE), as the fast path, the routes and the media
    stream report it: one status, code and detail."""

    status_code = 503
    code = "redis_unavailable"
    retryable = True
    default_headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}

    def __init__(self, detail: str = REDIS_DOWN, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail, headers)


class NotAcceptable(CallstreamError):
    status_code = 406
    code = "not_acceptable"


class UnsupportedMediaType(CallstreamError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidText(CallstreamError):
    status_code = 422
    code = "invalid_text"


class DuplicateKey(CallstreamError):
    status_code = 422
    code = "duplicate_key"


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


POSTGRES_DOWN = "PostgreSQL is unavailable; retry shortly."
STORE_DOWN = "The object store of recordings (AUDIO_STORE_URL) is unavailable; retry shortly."
STORE_ERROR = "The object store of recordings (AUDIO_STORE_URL) refused the request; it is logged."
INTERNAL_ERROR = "Internal error; it has been logged."
