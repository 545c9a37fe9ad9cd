"""The supervisor's dashboard: one static page and its assets (service/dashboard/): its script,
the contract the script reads the server's rules from (generated), and its style.

The page holds no data, so it is served without a key (core/access.py: OPEN); the script asks
the supervisor for a key and sends it in a header with every read of the API. The headers keep
the page to itself: a Content-Security-Policy that allows only this origin's script, style and
connections (no inline code, no framing), media from `blob:` only (a call's recording is
fetched with the key, which an <audio> element cannot send, and played from a Blob), and
`nosniff`. Each answer carries a strong ETag and `no-cache`: a browser revalidates (a cheap
304) on every load, so a deploy never pairs a new page with an old script, and the files are a
few kilobytes each.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import Response

from service.conditional import IfNoneMatchHeader, etag_of, parse_if_none_match

router = APIRouter(tags=["dashboard"], include_in_schema=False)

# Every source of content is this origin; nothing inline, nothing framed, no form posts. Media
# only from blob: URLs (the page's own Blobs: the recording it fetched with the key).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; media-src blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
CACHE_CONTROL = "no-cache"  # revalidate on every load (see the module docstring)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@functools.cache
def asset(name: str, media_type: str) -> Asset:
    """A file of service/dashboard/, read once per process (it is package data)."""
    body = files("service").joinpath("dashboard", name).read_bytes()
    return Asset(body, media_type, etag_of(body))


def serve(found: Asset, if_none_match: str | None) -> Response:
    headers = {**SECURITY_HEADERS, "ETag": found.etag, "Cache-Control": CACHE_CONTROL}
    condition = parse_if_none_match(if_none_match)
    if condition is not None and condition.matches(found.etag):
        return Response(status_code=304, headers=headers)
    return Response(found.body, headers=headers, media_type=found.media_type)


@router.api_route("/dashboard", methods=["GET", "HEAD"])
async def dashboard_page(if_none_match: IfNoneMatchHeader = None) -> Response:
    return serve(asset("index.html", "text/html; charset=utf-8"), if_none_match)


@router.api_route("/dashboard/dashboard.js", methods=["GET", "HEAD"])
async def dashboard_script(if_none_match: IfNoneMatchHeader = None) -> Response:
    return serve(asset("dashboard.js", "text/javascript; charset=utf-8"), if_none_match)


@router.api_route("/dashboard/contract.js", methods=["GET", "HEAD"])
async def dashboard_contract(if_none_match: IfNoneMatchHeader = None) -> Response:
    """The server's rules the script needs, generated (scripts/contract_js.py)."""
    return serve(asset("contract.js", "text/javascript; charset=utf-8"), if_none_match)


@router.api_route("/dashboard/dashboard.css", methods=["GET", "HEAD"])
async def dashboard_style(if_none_match: IfNoneMatchHeader = None) -> Response:
    return serve(asset("dashboard.css", "text/css; charset=utf-8"), if_none_match)
