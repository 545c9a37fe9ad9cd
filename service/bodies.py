"""HTTP body hygiene, for every HTTP transport (the fast path, the routes, the access gate): the
content types read as JSON, the encoding JSON text must have, no key twice, and the body's size."""

from __future__ import annotations

import json
import re
from typing import Any

from core.errors import BodyTooLarge, DuplicateKey, UnreadableBody, UnsupportedMediaType

_JSON_SUBTYPE = re.compile(r"(?:json|[^;/\s]+\+json)", re.IGNORECASE)
_PACKET_KEYS = (b'"sequence"', b'"data"', b'"timestamp"', b'"track"')


def is_json(content_type: str | None) -> bool:
    """A body is JSON when undeclared, `application/json` or `application/<anything>+json`."""
    if content_type is None or not content_type.strip():
        return True
    media_type = content_type.split(";", 1)[0].strip()
    main, _, sub = media_type.partition("/")
    return main.lower() == "application" and _JSON_SUBTYPE.fullmatch(sub) is not None


def require_json(content_type: str | None) -> None:
    if not is_json(content_type):
        raise UnsupportedMediaType(
            f"the body must be JSON: send Content-Type: application/json (got {content_type!r})"
        )


def check_body_encoding(body: bytes) -> None:
    """JSON text is UTF-8 without a byte order mark (RFC 8259). Python's json module also reads
    UTF-16, UTF-32 and a BOM; the fast path does not, so neither may the routes."""
    if body.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")) or b"\x00" in body[:4]:
        raise UnreadableBody("the body must be UTF-8 JSON text, without a byte order mark")


def check_unique_keys(body: bytes, packets: int) -> None:
    """A JSON object naming a key twice is refused (422): parsers disagree on which one wins.
    Cheap first: a packet key appearing no more often than there are packets cannot be doubled
    (inside a string a quote is escaped, so `"data"` there is the whole value "data" at most);
    only a body that fails that count is parsed again to be sure."""
    if body.count(b'"packets"') <= 1 and all(body.count(k) <= packets for k in _PACKET_KEYS):
        return
    refuse_duplicate_keys(body)


def refuse_duplicate_keys(body: bytes) -> None:
    def pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"the body names the key {key!r} twice in one object")
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(body, object_pairs_hook=pairs_to_dict)
    except ValueError:  # not JSON at all: the validation says so
        return


def check_body_size(declared: int | None, limit: int) -> None:
    """Refuse a body by its Content-Length, before a byte of it is read."""
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"the body is larger than {limit} bytes (MAX_BODY_BYTES)")
