"""Prometheus metrics for the API and the worker, defined once, exported by `GET /metrics`.

Several API processes and several workers: with PROMETHEUS_MULTIPROC_DIR set (before the process
starts), prometheus-client's multiprocess mode keeps every process's counters in memory-mapped
files of that directory, and a scrape of any API process sums them all, the workers' included.
The API and the workers of one stack must share the directory, and it must be emptied when the
stack starts (a stale directory would add the previous run's counts). Unset, each process counts
for itself and `/metrics` shows the answering API process only.

Cost: counting is in-process (a lock and an add, or a write into the mapped file): no Redis round
trip per packet. Label values are bounded sets of our own words, never a call id.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import wraps
from types import TracebackType
from typing import TypeVar

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.errors import CallstreamError, RedisUnavailable
from db.outages import REDIS_OUTAGE
from db.packets import Outcome, PacketFields, PacketResult

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# The classic text format, which every Prometheus version reads (our names need no escaping).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_shared_dir = os.environ.get(MULTIPROC_DIR)
if _shared_dir:
    # prometheus-client writes its files there as soon as a metric below is created.
    os.makedirs(_shared_dir, exist_ok=True)

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def process_id() -> int:
    """This process' id, read at start and again after a fork. prometheus-client's multiprocess
    values ask their process identifier on every inc and observe, to notice a fork: with
    os.getpid, a system call each (glibc no longer caches it), 4% of the API's CPU at 60 live
    calls (BENCHMARKS.md, Real-time capacity). The library takes any identifier that differs
    between processes running at once (MultiProcessValue's process_identifier), which this is."""
    return _pid


if getattr(values.ValueClass, "_multiprocess", False):  # the mode PROMETHEUS_MULTIPROC_DIR chose
    values.ValueClass = values.MultiProcessValue(process_identifier=process_id)  # type: ignore[no-untyped-call]

# Ingestion (every transport: counted in core/ingestion.py)
PACKETS = Counter(
    "callstream_packets",
    "Packets received, by what storing them found: new (in order), duplicate, out_of_order, "
    "gap (new, after missing sequences), refused (see callstream_packets_refused_total).",
    ["outcome"],
)
PACKETS_REFUSED = Counter(
    "callstream_packets_refused",
    "Packets refused by ingestion, by the error code of the answer (nothing of them stored).",
    ["code"],
)
INGEST_SECONDS = Histogram(
    "callstream_ingest_duration_seconds",
    "Time to check and store one request's packets (one Redis round trip), refusals included.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
COMPLETIONS = Counter(
    "callstream_calls_completed", "Calls completed, by reason (explicit, idle).", ["reason"]
)
FEED_SESSIONS = Counter(
    "callstream_feed_sessions",
    "PBX feed sessions (AudioSocket, chan_websocket, FreeSWITCH, AudioHook) that ended, by "
    "transport and how: ended (the PBX ended it), dropped (the connection went away), or the "
    "code of the refusal that ended it.",
    ["transport", "outcome"],
)
# The worker
AI_REQUESTS = Counter(
    "callstream_ai_requests",
    "Requests to the AI provider, by step and outcome (ok, error, timeout, rejected).",
    ["step", "outcome"],
)
AI_SECONDS = Histogram(
    "callstream_ai_request_duration_seconds",
    "Time of one AI request, by step, failures included.",
    ["step"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0),
)
AI_RETRIES = Counter(
    "callstream_ai_retries",
    "AI attempts that retried a failed one of the same unit of work (a transcription window, "
    "the sentiment step), by step.",
    ["step"],
)
AI_UNITS_EXHAUSTED = Counter(
    "callstream_ai_units_exhausted",
    "Units of AI work (a transcription window, the sentiment step) whose own retry budget ran "
    "out, by step and phase: live (the window is tried again, with a fresh budget, at the call's "
    "end) or final (the call ends FAILED, naming it).",
    ["step", "phase"],
)
JOB_RETRIES = Counter(
    "callstream_job_retries", "Call jobs deferred because PostgreSQL or Redis was unavailable."
)
BREAKER_OPENINGS = Counter(
    "callstream_ai_breaker_openings",
    "Failures that opened (or kept open) the shared AI circuit breaker.",
)
LEASE_RECOVERIES = Counter(
    "callstream_lease_recoveries", "Calls the reaper re-ran because their worker's lease lapsed."
)
ERROR_ANSWERS = Counter(
    "callstream_error_answers_total",
    "HTTP answers with an error, by their code (refused requests, outages, 500s).",
    ["code"],
)
FLUSH_SECONDS = Histogram(
    "callstream_flush_duration_seconds",
    "Time to flush one call from Redis to PostgreSQL (and claim it).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
# Webhooks (jobs/webhooks.py): by endpoint, named by its scheme, host and port only (a path or
# query may hold a token); the endpoints are WEBHOOK_URLS, a bounded set.
WEBHOOK_DELIVERIES = Counter(
    "callstream_webhook_deliveries",
    "Webhook deliveries ended, by endpoint and outcome: delivered (2xx), failed (its retries "
    "spent: a dead letter), gone (the endpoint answered 410).",
    ["endpoint", "outcome"],
)
WEBHOOK_ATTEMPTS = Counter(
    "callstream_webhook_attempts",
    "Webhook delivery attempts, by endpoint and result: 2xx, 3xx, 4xx, 5xx, timeout, error.",
    ["endpoint", "result"],
)
WEBHOOK_LATENCY = Histogram(
    "callstream_webhook_delivery_latency_seconds",
    "From the event (the state's commit) to its delivery's 2xx, retries included, by endpoint.",
    ["endpoint"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0, 86400.0),
)

# The hot path looks its label children up once, here, instead of per packet.
_BY_OUTCOME = {
    Outcome.IN_ORDER: PACKETS.labels("new"),
    Outcome.DUPLICATE: PACKETS.labels("duplicate"),
    Outcome.OUT_OF_ORDER: PACKETS.labels("out_of_order"),
    Outcome.AFTER_GAP: PACKETS.labels("gap"),
}
_REFUSED = PACKETS.labels("refused")


def count_packets(results: Sequence[PacketResult]) -> None:
    # One inc per outcome seen, not per packet: each inc takes the value's lock and writes the
    # shared file (PROMETHEUS_MULTIPROC_DIR), and a batch is mostly one outcome.
    counts: dict[Outcome, int] = {}
    for result in results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    for outcome, count in counts.items():
        _BY_OUTCOME[outcome].inc(count)


def count_error_answer(code: str) -> None:
    ERROR_ANSWERS.labels(code).inc()


def count_refused(code: str, packets: int) -> None:
    _REFUSED.inc(packets)
    PACKETS_REFUSED.labels(code).inc(packets)


class counting_refusals:  # lower case: used as a `with` statement, like contextlib's
    """Count the packets of a request refused inside the block by the error's code."""

    __slots__ = ("packets",)

    def __init__(self, packets: int) -> None:
        self.packets = packets

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, CallstreamError):
            count_refused(exc.code, self.packets)
        elif isinstance(exc, REDIS_OUTAGE):
            count_refused(RedisUnavailable.code, self.packets)


S = TypeVar("S")
Append = Callable[[S, str, Sequence[PacketFields]], Awaitable[list[PacketResult]]]


def measured_append(append: Append[S]) -> Append[S]:
    """Wraps the one method every transport stores packets through: outcomes, refusals and the
    time taken, counted alike for the fast path, the routes and the media WebSocket."""

    @wraps(append)
    async def measured(
        self: S, call_id: str, packets: Sequence[PacketFields]
    ) -> list[PacketResult]:
        started = time.perf_counter()
        try:
            with counting_refusals(len(packets)):
                results = await append(self, call_id, packets)
        finally:
            INGEST_SECONDS.observe(time.perf_counter() - started)
        count_packets(results)
        return results

    return measured


def count_completion(reason: str) -> None:
    COMPLETIONS.labels(reason).inc()


def count_feed_session(transport: str, outcome: str) -> None:
    FEED_SESSIONS.labels(transport, outcome).inc()


def count_webhook_attempt(endpoint: str, result: str) -> None:
    WEBHOOK_ATTEMPTS.labels(endpoint, result).inc()


def count_webhook_end(endpoint: str, outcome: str, since_event_s: float | None) -> None:
    WEBHOOK_DELIVERIES.labels(endpoint, outcome).inc()
    if outcome == "delivered" and since_event_s is not None:
        WEBHOOK_LATENCY.labels(endpoint).observe(since_event_s)


def count_ai_request(step: str, outcome: str, seconds: float) -> None:
    AI_REQUESTS.labels(step, outcome).inc()
    AI_SECONDS.labels(step).observe(seconds)


# Read at scrape time (the API, from Redis): the state of the system rather than event counts.
@dataclass(frozen=True, slots=True)
class LiveFigures:
    live_calls: int
    awaiting_flush: int
    awaiting_result: int
    queued_jobs: int
    oldest_wait_s: float | None


class _LiveCollector(Collector):
    def __init__(self, figures: LiveFigures) -> None:
        self.figures = figures

    def collect(self) -> list[Metric]:
        f = self.figures
        return [
            _gauge("callstream_live_calls", "Calls still receiving packets.", f.live_calls),
            _gauge(
                "callstream_calls_awaiting_flush",
                "Completed calls not yet copied to PostgreSQL.",
                f.awaiting_flush,
            ),
            _gauge(
                "callstream_calls_awaiting_result",
                "Completed calls not yet ARCHIVED or FAILED.",
                f.awaiting_result,
            ),
            _gauge("callstream_queued_jobs", "Jobs waiting in the arq queue.", f.queued_jobs),
            _gauge(
                "callstream_oldest_wait_seconds",
                "How long the longest-waiting completed call has waited for its result.",
                f.oldest_wait_s or 0.0,
            ),
        ]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counted_registry() -> CollectorRegistry:
    """Every process's counts when they share a directory; this process's alone otherwise."""
    shared = os.environ.get(MULTIPROC_DIR)
    if not shared:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, shared)  # type: ignore[no-untyped-call]
    return registry


def render(figures: LiveFigures | None = None) -> bytes:
    """The exposition text: the counters of every process, then the live figures, if given."""
    text = generate_latest(_counted_registry())
    if figures is None:
        return text
    live = CollectorRegistry(auto_describe=False)
    live.register(_LiveCollector(figures))
    return text + generate_latest(live)
