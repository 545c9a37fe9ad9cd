"""Choosing a representation from an `Accept` header (RFC 9110 §12.5.1): the offered media type
with the highest quality the client gives it, the server's order breaking ties."""

from __future__ import annotations

from collections.abc import Sequence

from core.errors import NotAcceptable


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def _ranges(accept: str) -> list[tuple[str, float]]:
    found = []
    for item in accept.split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        if media:
            found.append((media, _quality(params)))
    return found


def _matches(media_range: str, offered: str) -> bool:
    if media_range in ("*/*", offered):
        return True
    kind, _, sub = media_range.partition("/")
    return sub == "*" and offered.startswith(f"{kind}/")


def choose(accept: str | None, offered: Sequence[str]) -> str:
    """The media type of `offered` to answer (the first one without an Accept header); 406 if
    the header refuses every one."""
    if not accept or not accept.strip():
        return offered[0]
    ranges = _ranges(accept)
    best, best_q = None, 0.0
    for media in offered:
        # The most specific range that matches decides the type's quality.
        fitting = [(r, q) for r, q in ranges if _matches(r, media)]
        if not fitting:
            continue
        _, q = max(fitting, key=lambda rq: (rq[0] == media, not rq[0].startswith("*")))
        if q > best_q:
            best, best_q = media, q
    if best is None:
        raise NotAcceptable(f"Accept: {accept[:200]!r} names none of {', '.join(offered)}")
    return best
