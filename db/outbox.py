"""The webhooks' outbox: the rows a state change writes, in its own statement, to announce itself
(invariant 19: nothing is announced before it is stored, nothing stored goes unannounced).

`OUTBOX` is a CTE fragment for db/worker_writes.py's statements: one row per endpoint, for the
event their `held` CTE made happen (none when no endpoint wants the event). `call.utterance`
rows are written with the utterances, in the statement that stores their window
(db/transcripts.py: `UTTERANCE_OUTBOX`), their body fixed then. The workers deliver them all
(jobs/webhooks.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from db.feed_events import Said


class EventType(StrEnum):
    COMPLETED = "call.completed"
    ARCHIVED = "call.archived"
    FAILED = "call.failed"
    UTTERANCE = "call.utterance"


def event_types(names: Iterable[str]) -> frozenset[EventType]:
    """WEBHOOK_EVENTS' names as event types; ValueError naming those that are none."""
    known = {e.value for e in EventType}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(
            f"WEBHOOK_EVENTS: unknown events {unknown}: use some of {', '.join(sorted(known))}"
        )
    return frozenset(EventType(n) for n in names)


def new_event_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def links(base_url: str | None, call_id: str) -> dict[str, str]:
    """Where a receiver reads the rest of a call (PUBLIC_BASE_URL; paths without it)."""
    base = (base_url or "").rstrip("/")
    return {
        "self": f"{base}/v1/calls/{call_id}",
        "transcript": f"{base}/v1/calls/{call_id}/transcript",
        "recording": f"{base}/v1/calls/{call_id}/audio",
    }


@dataclass(frozen=True, slots=True)
class Webhooks:
    """Who wants which events (WEBHOOK_URLS, WEBHOOK_EVENTS), and what an utterance's event
    names (SPEAKER_NAMES, PUBLIC_BASE_URL)."""

    endpoints: tuple[str, ...] = ()
    events: frozenset[EventType] = frozenset()
    speakers: tuple[str, str] = ("caller", "agent")
    links_base: str | None = None

    def params(self, event: EventType) -> dict[str, Any]:
        """The OUTBOX fragment's parameters for `event`: a new id (the `webhook-id` of every
        attempt, to every endpoint), and the endpoints that want it."""
        wanted = list(self.endpoints) if event in self.events else []
        return {"wh_id": new_event_id(), "wh_type": event.value, "wh_urls": wanted}

    def utterance_body(self, call_id: str, said: Said) -> str:
        data = {"call_id": call_id, **said.fields(), "links": links(self.links_base, call_id)}
        event = {"type": EventType.UTTERANCE.value, "timestamp": datetime.now(UTC).isoformat(),
                 "data": data}  # fmt: skip
        return orjson.dumps(event).decode()


NO_WEBHOOKS = Webhooks()

OUTBOX = """
    outbox AS (
        INSERT INTO webhook_delivery (event_id, event_type, call_id, endpoint)
        SELECT :wh_id, :wh_type, held.call_id, url
        FROM held, unnest(CAST(:wh_urls AS text[])) AS url
    )"""


# `call.utterance` rows, one per utterance the statement stores and endpoint, as a CTE of that
# statement (after `held`, a row when it stores anything): the event's text is the utterance's,
# and nothing more. Its parameters: utterance_params.
UTTERANCE_OUTBOX = """
    utterance_outbox AS (
        INSERT INTO webhook_delivery (event_id, event_type, call_id, endpoint, body)
        SELECT e.id, :ue_type, held.call_id, url, e.body
        FROM held, unnest(CAST(:ue_ids AS text[]), CAST(:ue_bodies AS text[])) AS e(id, body),
             unnest(CAST(:ue_urls AS text[])) AS url
    )"""


def utterance_params(call_id: str, said: Sequence[Said], webhooks: Webhooks) -> dict[str, Any]:
    """UTTERANCE_OUTBOX's parameters: none of its rows unless an endpoint wants them."""
    wanted = EventType.UTTERANCE in webhooks.events and webhooks.endpoints and said
    return {
        "ue_type": EventType.UTTERANCE.value,
        "ue_ids": [new_event_id() for _ in said] if wanted else [],
        "ue_bodies": [webhooks.utterance_body(call_id, s) for s in said] if wanted else [],
        "ue_urls": list(webhooks.endpoints) if wanted else [],
    }
