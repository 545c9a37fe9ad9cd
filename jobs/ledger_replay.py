"""`callstream erase --replay-ledger <file or URL>`: after a database restore, erase again what
the erasure ledger says was erased (a backup taken before an erasure holds the call again).

The ledger comes from `GET /v1/erasures?since=<when the backup was taken>`: saved to a file, or
read from the API directly (every page, with an admin key). Each entry is recorded again in the
restored database (pending, with its original reason, asker and time), audited, queued, and run
here at once through the one erasure path (jobs/erasure.py); a call a worker still works on is
left to the workers, which finish its queued erasure. Like the workers, it reads its stores from
the environment (DATABASE_URL, REDIS_URL, AUDIO_STORE_URL)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from pydantic import TypeAdapter, ValidationError

from core import erasure
from core.ingestion import is_call_id
from db.erasures import LedgerEntry
from jobs.ai import MockAI
from jobs.erasure import CallBusy, erase
from jobs.queue import enqueue_erasure
from jobs.resources import make_resources
from settings import Settings, get_settings

KEY_ENV = "CALLSTREAM_API_KEY"
EXIT_USAGE = 2
MAX_PAGES = 100_000  # of a ledger read from the API: a loop that never ends is a bug, not data
_ENTRIES = TypeAdapter(list[LedgerEntry])


class LedgerUnreadable(ValueError):
    """The ledger given cannot be read, or is not a ledger; says what is wrong."""


@dataclass(frozen=True, slots=True)
class ReplayReport:
    erased: int  # erased again here
    left_to_workers: int  # a worker still worked on the call: its erasure is queued


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callstream erase",
        description="Erase again, after a database restore, what the erasure ledger lists.",
    )
    parser.add_argument(
        "--replay-ledger",
        required=True,
        metavar="FILE|URL",
        help="the ledger: a file saved from GET /v1/erasures?since=..., or that URL itself",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(KEY_ENV),
        help=f"an admin key, to read the ledger from a URL (default ${KEY_ENV})",
    )
    return parser


def parse_ledger(raw: bytes) -> tuple[list[LedgerEntry], str | None]:
    """The entries of one ledger page (GET /v1/erasures' answer) or of a plain list of them,
    and the page's next cursor."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LedgerUnreadable(f"not JSON: {exc}") from None
    items, cursor = document, None
    if isinstance(document, dict):
        items, cursor = document.get("items"), document.get("next_cursor")
    try:
        entries = _ENTRIES.validate_python(items)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise LedgerUnreadable(f"not a ledger: {where}: {first['msg']}") from None
    bad = [e.call_id for e in entries if not is_call_id(e.call_id)]
    if bad:
        raise LedgerUnreadable(f"not a call id: {bad[0]!r}")
    return entries, cursor if isinstance(cursor, str) else None


async def read_ledger(source: str, api_key: str | None) -> list[LedgerEntry]:
    """Every entry of the ledger at `source`: a file, or an http(s) URL read page by page."""
    if urlsplit(source).scheme not in ("http", "https"):
        try:
            raw = await asyncio.to_thread(Path(source).read_bytes)
        except OSError as exc:
            raise LedgerUnreadable(f"cannot read {source}: {exc.strerror}") from None
        return parse_ledger(raw)[0]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    entries: list[LedgerEntry] = []
    params: dict[str, Any] = {}
    async with httpx.AsyncClient(headers=headers, timeout=30.0) as http:
        for _ in range(MAX_PAGES):
            try:
                answer = await http.get(source, params=params)
            except httpx.HTTPError as exc:
                raise LedgerUnreadable(f"cannot read {source}: {exc!r}") from None
            if answer.status_code != 200:
                raise LedgerUnreadable(
                    f"{source} answered {answer.status_code}: {answer.text[:300]}"
                )
            page, cursor = parse_ledger(answer.content)
            entries += page
            if cursor is None:
                return entries
            params = {"cursor": cursor}
    raise LedgerUnreadable(f"{source} gave more than {MAX_PAGES} pages")


async def replay(settings: Settings, entries: Sequence[LedgerEntry]) -> ReplayReport:
    """Record each entry again (pending) and erase it through the one path."""
    res = make_resources(settings, ai=MockAI())  # no AI is used: no model is loaded for it
    erased = left = 0
    try:
        enqueue = partial(enqueue_erasure, res.queue)
        for entry in entries:
            await erasure.ask(
                res.sessions,
                enqueue,
                res.ingestion,
                res.redis,
                entry.call_id,
                entry.scope,
                entry.reason,
                entry.requested_by,
                at=entry.requested_at,
                again=True,
            )
            try:
                await erase(res, entry.call_id, entry.scope)
                erased += 1
            except CallBusy:
                left += 1
    finally:
        await res.close()
    return ReplayReport(erased, left)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        entries = asyncio.run(read_ledger(args.replay_ledger, args.api_key))
    except LedgerUnreadable as exc:
        sys.stderr.write(f"callstream erase: error: {exc}\n")
        return EXIT_USAGE
    report = asyncio.run(replay(get_settings(), entries))
    sys.stdout.write(
        f"{len(entries)} ledger entries replayed: {report.erased} erased again, "
        f"{report.left_to_workers} queued for the workers (a worker still held the call)\n"
    )
    return 0
