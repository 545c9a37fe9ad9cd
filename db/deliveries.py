"""The webhooks' deliveries at rest (table webhook_delivery, written by db/outbox.py's fragment):
what the workers claim and record (jobs/webhooks.py), what an admin lists and sends again.

A row is `pending` until an attempt is answered 2xx (`delivered`), or its schedule is spent or
its endpoint answered 410 Gone (`failed`: a dead letter). A worker claims due rows by moving
their `next_at` past the attempt's longest time (a lease): a worker killed mid-delivery leaves
the row due again then, never lost. `attempts` fences the record of an attempt, so a late
worker whose lease ran out cannot write over a newer attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

DeliveryState = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class Due:
    """A delivery a worker has claimed for one attempt."""

    id: int
    event_id: str
    event_type: str
    call_id: str
    endpoint: str
    occurred_at: datetime
    body: str | None
    attempts: int  # before this one
    final_attempt: int | None  # an admin's retry: this attempt is the last, whatever it gets


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery as an admin sees it."""

    id: int
    event_id: str
    event_type: str
    call_id: str
    endpoint: str
    state: str
    occurred_at: datetime
    attempts: list[dict[str, Any]]  # each: at, status (or null), error (or null)
    next_at: datetime | None
    delivered_at: datetime | None


_COLUMNS = "id, event_id, event_type, call_id, endpoint, occurred_at, body, attempts, final_attempt"

# Oldest first, each endpoint's up to its room (`per_endpoint` less the attempts this worker
# has in flight to it): a receiver that is down holds its own slots, never another's. The
# UPDATE re-checks that the row is still due: another worker may have claimed it since the
# ranking's snapshot.
_CLAIM = text(
    f"""
    WITH flying AS (
        SELECT * FROM unnest(CAST(:flying_urls AS text[]), CAST(:flying_counts AS int[]))
                      AS f(endpoint, n)
    ), ranked AS (
        SELECT d.id, d.endpoint,
               row_number() OVER (PARTITION BY d.endpoint ORDER BY d.next_at, d.id) AS n
        FROM webhook_delivery d
        WHERE d.state = 'pending' AND d.next_at <= now()
    ), picked AS (
        SELECT d.id FROM webhook_delivery d
        JOIN ranked USING (id) LEFT JOIN flying ON flying.endpoint = ranked.endpoint
        WHERE ranked.n <= :per_endpoint - coalesce(flying.n, 0)
        ORDER BY d.next_at, d.id
        LIMIT :limit
        FOR UPDATE OF d SKIP LOCKED
    )
    UPDATE webhook_delivery d SET next_at = now() + make_interval(secs => :lease_s)
    FROM picked WHERE d.id = picked.id AND d.state = 'pending' AND d.next_at <= now()
    RETURNING {", ".join(f"d.{c}" for c in _COLUMNS.split(", "))}
    """
)
# The body is the event's, whichever endpoint's row fixes it first: every endpoint, and every
# retry, gets the same bytes.
_FIX_BODY = text(
    "UPDATE webhook_delivery SET body = :body WHERE event_id = :event_id AND body IS NULL"
)
_BODY = text("SELECT body FROM webhook_delivery WHERE id = :id")
_RECORD = text(
    """
    UPDATE webhook_delivery SET
        attempts = attempts + 1,
        attempt_log = attempt_log || jsonb_build_array(jsonb_build_object(
            'at', now(), 'status', CAST(:status AS int), 'error', CAST(:error AS text))),
        state = :state,
        next_at = CASE WHEN :state = 'pending'
                       THEN now() + make_interval(secs => :retry_in_s) ELSE next_at END,
        delivered_at = CASE WHEN :state = 'delivered' THEN now() END
    WHERE id = :id AND attempts = :attempts AND state = 'pending'
    RETURNING extract(epoch FROM now() - occurred_at) AS since_event
    """
)
_LIST = text(
    """
    SELECT id, event_id, event_type, call_id, endpoint, state, occurred_at, attempt_log,
           CASE WHEN state = 'pending' THEN next_at END AS next_at, delivered_at
    FROM webhook_delivery
    WHERE (CAST(:state AS text) IS NULL OR state = :state)
      AND (CAST(:before AS bigint) IS NULL OR id < :before)
    ORDER BY id DESC LIMIT :limit
    """
)
# An admin's retry: one more attempt, at once; the state it was in, or nothing if unknown.
_RETRY = text(
    """
    WITH old AS (SELECT id, state FROM webhook_delivery WHERE id = :id FOR UPDATE),
    moved AS (
        UPDATE webhook_delivery d SET state = 'pending', next_at = now(),
                                      final_attempt = d.attempts + 1
        FROM old WHERE d.id = old.id AND old.state = 'failed'
        RETURNING d.id
    )
    SELECT old.state, (SELECT count(*) FROM moved) AS moved FROM old
    """
)


async def claim_due(
    conn: AsyncConnection,
    lease_s: float,
    per_endpoint: int,
    limit: int,
    in_flight: Mapping[str, int],
) -> list[Due]:
    """Claim due rows for one attempt each, under a lease of `lease_s`: at most `limit`, and
    per endpoint at most `per_endpoint` less its attempts `in_flight` in this worker."""
    params = {
        "lease_s": lease_s,
        "per_endpoint": per_endpoint,
        "limit": limit,
        "flying_urls": list(in_flight),
        "flying_counts": list(in_flight.values()),
    }
    rows = await conn.execute(_CLAIM, params)
    return [Due(**row._mapping) for row in rows]


async def fix_body(conn: AsyncConnection, due: Due, body: str) -> str:
    """The body `due`'s event is sent with: `body`, unless another row of it has one already."""
    await conn.execute(_FIX_BODY, {"body": body, "event_id": due.event_id})
    fixed = await conn.scalar(_BODY, {"id": due.id})
    return str(fixed)


async def record_attempt(
    conn: AsyncConnection,
    due: Due,
    state: DeliveryState,
    status: int | None,
    error: str | None,
    retry_in_s: float = 0.0,
) -> float | None:
    """Keep an attempt's outcome and the row's next state; the seconds since the event, or None
    if the row was no longer this worker's (another took it after the lease ran out)."""
    params = {
        "id": due.id,
        "attempts": due.attempts,
        "state": state,
        "status": status,
        "error": error,
        "retry_in_s": retry_in_s,
    }
    since = await conn.scalar(_RECORD, params)
    return None if since is None else float(since)


async def list_deliveries(
    conn: AsyncConnection, state: DeliveryState | None, before: int | None, limit: int
) -> list[Delivery]:
    rows = await conn.execute(_LIST, {"state": state, "before": before, "limit": limit})
    return [
        Delivery(
            id=r.id,
            event_id=r.event_id,
            event_type=r.event_type,
            call_id=r.call_id,
            endpoint=r.endpoint,
            state=r.state,
            occurred_at=r.occurred_at,
            attempts=list(r.attempt_log),
            next_at=r.next_at,
            delivered_at=r.delivered_at,
        )
        for r in rows
    ]


async def retry_failed(conn: AsyncConnection, delivery_id: int) -> str | None:
    """Send a dead letter once more, at once. Its state before (`failed` if it was moved), or
    None if there is no such delivery."""
    row = (await conn.execute(_RETRY, {"id": delivery_id})).one_or_none()
    return None if row is None else str(row.state)
