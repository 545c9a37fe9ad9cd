"""The webhooks' outbox: the rows a state change writes, in its own statement, to announce itself
(invariant 19: nothing is announced before it is stored, nothing stored goes unannounced).

`OUTBOX` is a CTE fragment for db/worker_writes.py's statements: one row per endpoint, for the
event their `held` CTE made happen (none when no endpoint wants the event). The workers deliver
them (jobs/webhooks.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    COMPLETED = "call.completed"
    ARCHIVED = "call.archived"
    FAILED = "call.failed"
    UTTERANCE = "call.utterance"


# WEBHOOK_EVENTS' default: a call's result, whichever it is.
DEFAULT_EVENTS = frozenset({EventType.ARCHIVED, EventType.FAILED})


@dataclass(frozen=True, slots=True)
class Webhooks:
    """Who wants which events (WEBHOOK_URLS, WEBHOOK_EVENTS)."""

    endpoints: tuple[str, ...] = ()
    events: frozenset[EventType] = DEFAULT_EVENTS

    def params(self, event: EventType) -> dict[str, Any]:
        """The OUTBOX fragment's parameters for `event`: a new id (the `webhook-id` of every
        attempt, to every endpoint), and the endpoints that want it."""
        wanted = list(self.endpoints) if event in self.events else []
        return {"wh_id": f"msg_{uuid.uuid4().hex}", "wh_type": event.value, "wh_urls": wanted}


NO_WEBHOOKS = Webhooks()

OUTBOX = """
    outbox AS (
        INSERT INTO webhook_delivery (event_id, event_type, call_id, endpoint)
        SELECT :wh_id, :wh_type, held.call_id, url
        FROM held, unnest(CAST(:wh_urls AS text[])) AS url
    )"""
