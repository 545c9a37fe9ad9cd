"""The supervisor's dashboard: one static page and its assets (service/dashboard/): its scripts,
native ES modules the page's entry module (`dashboard.js`) imports (one of them, `contract.js`,
generated from the server's rules), and its style. No build step: each module is a file, served
as it is written.

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


# The page's script modules (service/dashboard/<name>.js), each served at /dashboard/<name>.js. A
# new module is added here and to the dashboard's rule in core/access.py (which names them, so
# that no other path under /dashboard is open); tests/service/test_dashboard.py checks that every
# module the page imports is both.
MODULES = (
    "dashboard",  # the entry module: <script type="module"> in index.html
    "contract",  # generated: scripts/contract_js.py
    "api",
    "feed",
    "model",
    "routes",
    "format",
    "dom",
    "board",
    "board-tables",
    "rereads",
    "system",
    "call-page",
    "recording",
    "conversation",
    "talk",
)
JAVASCRIPT = "text/javascript; charset=utf-8"


def _module_route(name: str) -> None:
    async def module(if_none_match: IfNoneMatchHeader = None) -> Response:
        return serve(asset(f"{name}.js", JAVASCRIPT), if_none_match)

    router.add_api_route(
        f"/dashboard/{name}.js", module, methods=["GET", "HEAD"], name=f"dashboard_{name}_js"
    )


for _name in MODULES:
    _module_route(_name)


@router.api_route("/dashboard/dashboard.css", methods=["GET", "HEAD"])
async def dashboard_style(if_none_match: IfNoneMatchHeader = None) -> Response:
    return serve(asset("dashboard.css", "text/css; charset=utf-8"), if_none_match)
