"""Delivering webhooks (Standard Webhooks), by every worker, from the outbox rows the state
changes wrote (db/outbox.py, db/deliveries.py): at least once, with the event's id on every
attempt, retried on WEBHOOK_RETRY_DELAYS_S with jitter, 410 Gone ending it, and an exhausted
one left as a dead letter for an admin to send again.

Not an arq job: a loop beside the worker's jobs (as the feed relay is), so that a receiver that
is slow or down never takes a job slot from a call. Each endpoint has at most a few attempts in
flight in a worker (PER_ENDPOINT), and each row its own schedule: one endpoint down never
delays another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from core import metrics
from core.webhooks import headers, secret_key
from db import calls, deliveries
from db.deliveries import DeliveryState, Due
from db.outages import is_outage
from db.outbox import links
from db.record import from_row
from jobs.resources import WorkerResources

log = logging.getLogger(__name__)

PER_ENDPOINT = 4  # a worker's attempts in flight to one endpoint
BATCH = 64  # the most rows one poll claims
POLL_S = 0.5  # how soon a new event is sent, at most, when the worker is idle
LEASE_MARGIN_S = 5.0  # a claimed row is due again this long after its attempt's timeout
MAX_ERROR_CHARS = 300
JITTER = (0.8, 1.2)  # each retry's delay is its setting times a factor in this range
ERROR_BACKOFF_MAX_S = 30.0  # the longest pause of the loop while its polls fail


def endpoint_label(url: str) -> str:
    """An endpoint as metrics and logs name it: scheme, host, port (a path may hold a token)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


async def _body(res: WorkerResources, due: Due) -> bytes:
    """The event's JSON: `data` is the call's record as GET /v1/calls/{id} answers it when the
    first attempt is made, its conversation figures included but never what was said (its
    `transcript` is left out: a receiver follows the link), and links to the rest. Fixed then:
    every attempt sends the same bytes."""
    if due.body is not None:
        return due.body.encode()
    async with res.sessions() as session:
        row = await calls.get_call(session, due.call_id)
    data: dict[str, Any] = (
        {"call_id": due.call_id}
        if row is None
        else from_row(row).model_dump(mode="json", exclude={"transcript"})
    )
    data["links"] = links(res.settings.public_base_url, due.call_id)
    event = {"type": due.event_type, "timestamp": due.occurred_at.isoformat(), "data": data}
    async with res.autocommit.connect() as conn:
        fixed = await deliveries.fix_body(conn, due, orjson.dumps(event).decode())
    return fixed.encode()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None
    error: str | None

    @property
    def result(self) -> str:
        """The attempt's result as metrics count it."""
        if self.status is not None:
            return f"{self.status // 100}xx"
        return "timeout" if self.error and self.error.startswith("no answer") else "error"


async def _post(
    client: httpx.AsyncClient, key: bytes, due: Due, body: bytes, timeout_s: float
) -> Answer:
    sent = headers(key, due.event_id, int(time.time()), body)
    try:
        # The whole attempt is bounded (httpx's timeout bounds each read, not their sum); the
        # answer's body is never read: a receiver's answer cannot cost memory.
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", due.endpoint, content=body, headers=sent) as answer:
                status = answer.status_code
    except TimeoutError:
        return Answer(None, f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return Answer(None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS] or "error")
    return Answer(status, None if 200 <= status < 300 else f"answered {status}")


def next_state(due: Due, answer: Answer, delays: tuple[float, ...]) -> tuple[DeliveryState, float]:
    """What an attempt's answer makes of the row, and the seconds to the next attempt."""
    if answer.status is not None and 200 <= answer.status < 300:
        return "delivered", 0.0
    if answer.status == 410:  # Gone: the receiver wants no more of this
        return "failed", 0.0
    made = due.attempts + 1
    if (due.final_attempt is not None and made >= due.final_attempt) or made > len(delays):
        return "failed", 0.0
    return "pending", delays[made - 1] * random.uniform(*JITTER)


async def deliver(res: WorkerResources, client: httpx.AsyncClient, key: bytes, due: Due) -> str:
    """One attempt of a claimed row, and its record; the row's new state."""
    s = res.settings
    label = endpoint_label(due.endpoint)
    answer = await _post(client, key, due, await _body(res, due), s.webhook_timeout_s)
    state, retry_in_s = next_state(due, answer, s.webhook_retry_delays_s)
    async with res.autocommit.connect() as conn:
        since = await deliveries.record_attempt(
            conn, due, state, answer.status, answer.error, retry_in_s
        )
    metrics.count_webhook_attempt(label, answer.result)
    if since is None:
        log.warning("webhook %s to %s: another worker took it over", due.event_id, label)
        return "pending"
    if state != "pending":
        metrics.count_webhook_end(label, "gone" if answer.status == 410 else state, since)
    if state == "failed":
        log.warning("webhook %s (%s) to %s: a dead letter: %s", due.event_id, due.event_type,
                    label, answer.error)  # fmt: skip
    elif state == "pending":
        log.info("webhook %s to %s: %s; retry in %.0f s", due.event_id, label, answer.error,
                 retry_in_s)  # fmt: skip
    return state


async def claim(res: WorkerResources, in_flight: dict[str, int], limit: int) -> list[Due]:
    lease_s = res.settings.webhook_timeout_s + LEASE_MARGIN_S
    async with res.autocommit.connect() as conn:
        return await deliveries.claim_due(conn, lease_s, PER_ENDPOINT, limit, in_flight)


def make_client() -> httpx.AsyncClient:
    # Redirects are not followed: a 3xx is an answer that is not 2xx (retried), as the
    # signature names the URL's receiver only.
    return httpx.AsyncClient(follow_redirects=False, timeout=None)


class DeliveryLoop:
    """Started by every worker with a WEBHOOK_SECRET: polls for due rows every POLL_S and runs
    each attempt as a task of its own, at most PER_ENDPOINT per endpoint and BATCH in all."""

    def __init__(self, res: WorkerResources) -> None:
        self.res = res
        self.key = secret_key(res.settings.webhook_secret.get_secret_value())
        self.in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        if self._task is None:
            self._client = make_client()
            self._task = asyncio.create_task(self._run(self._client), name="webhook-delivery")

    async def stop(self) -> None:
        """Cancel the loop, then any attempt in flight: their rows are due again after the lease
        (a receiver may get one of them twice; the webhook-id lets it drop the repeat)."""
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self, client: httpx.AsyncClient) -> None:
        failures = 0
        while True:
            try:
                self._start_attempts(client, await self._claim())
                failures = 0
            except Exception as exc:
                # PostgreSQL down (or a schema not migrated yet): the rows wait; the loop asks
                # again, less and less often, and says so each time.
                failures += 1
                wait_s = min(ERROR_BACKOFF_MAX_S, 2.0 ** min(failures, 10))
                if is_outage(exc):
                    log.warning("webhook delivery: %r; trying again in %.0f s", exc, wait_s)
                else:
                    log.exception("webhook delivery failed; trying again in %.0f s", wait_s)
                await asyncio.sleep(wait_s)
            await asyncio.sleep(POLL_S)

    async def _claim(self) -> list[Due]:
        room = BATCH - len(self._tasks)
        if room <= 0:
            return []
        return await claim(self.res, dict(self.in_flight), room)

    def _start_attempts(self, client: httpx.AsyncClient, claimed: list[Due]) -> None:
        for due in claimed:
            self.in_flight[due.endpoint] = self.in_flight.get(due.endpoint, 0) + 1
            task = asyncio.create_task(deliver(self.res, client, self.key, due))
            self._tasks.add(task)
            task.add_done_callback(partial(self._done, endpoint=due.endpoint))

    def _done(self, task: asyncio.Task[str], *, endpoint: str) -> None:
        self._tasks.discard(task)
        self.in_flight[endpoint] -= 1
        if not self.in_flight[endpoint]:
            del self.in_flight[endpoint]
        if not task.cancelled() and (exc := task.exception()) is not None:
            # PostgreSQL down while recording: the row is due again after its lease.
            log.warning("webhook delivery to %s: %r; it is retried", endpoint_label(endpoint), exc)
