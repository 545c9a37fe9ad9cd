"""GET /metrics: packets counted alike on the fast path and the FastAPI routes, completions, the
live figures from Redis, and the supervisor's key. Real Redis and PostgreSQL. The counters are
the test process's own (PROMETHEUS_MULTIPROC_DIR unset), so every test compares before and after."""

from __future__ import annotations

from httpx import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from core.access import Role
from settings import Settings
from tests.factories import packet
from tests.service.test_access import KEYS, client_for, keyed

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: AsyncClient, headers: dict[str, str] | None = None) -> Samples:
    answer = await client.get("/metrics", headers=headers or {})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_packets_are_counted_by_outcome_on_both_paths(both_paths: AsyncClient) -> None:
    client = both_paths
    before = await scrape(client)
    stream = "/v1/call/stream/m1"
    assert (await client.post(stream, json=packet(1))).status_code == 202  # new
    assert (await client.post(stream, json=packet(1))).status_code == 200  # duplicate
    assert (await client.post(stream, json=packet(4))).status_code == 202  # gap (2..3)
    assert (await client.post(stream, json=packet(3))).status_code == 202  # out of order
    batch = {"packets": [packet(5), packet(5), packet(6)]}
    assert (await client.post(f"{stream}/batch", json=batch)).status_code == 202
    too_large = packet(7, data="x" * 70_000)
    assert (await client.post(stream, json=too_large)).status_code == 413
    assert (await client.post("/v1/call/complete/m1")).status_code == 202
    assert (await client.post(f"{stream}/batch", json=batch)).status_code == 409
    after = await scrape(client)

    packets = "callstream_packets_total"
    assert grew(before, after, packets, outcome="new") == 3  # 1, 5, 6
    assert grew(before, after, packets, outcome="duplicate") == 2
    assert grew(before, after, packets, outcome="gap") == 1
    assert grew(before, after, packets, outcome="out_of_order") == 1
    assert grew(before, after, packets, outcome="refused") == 4
    refused = "callstream_packets_refused_total"
    assert grew(before, after, refused, code="payload_too_large") == 1
    assert grew(before, after, refused, code="call_completed") == 3
    assert grew(before, after, "callstream_calls_completed_total", reason="explicit") == 1
    # Every request that reached storage was timed, refused ones included.
    assert grew(before, after, "callstream_ingest_duration_seconds_count") == 7


async def test_an_oversized_batch_counts_its_packets_refused(
    client: AsyncClient, settings: Settings
) -> None:
    before = await scrape(client)
    batch = {"packets": [packet(i) for i in range(settings.max_batch_packets + 1)]}
    assert (await client.post("/v1/call/stream/m2/batch", json=batch)).status_code == 413
    after = await scrape(client)
    refused = grew(before, after, "callstream_packets_refused_total", code="payload_too_large")
    assert refused == settings.max_batch_packets + 1


async def test_live_figures_come_from_redis_at_scrape_time(client: AsyncClient) -> None:
    for call in ("live-1", "live-2", "done-1"):
        assert (await client.post(f"/v1/call/stream/{call}", json=packet(0))).status_code == 202
    assert (await client.post("/v1/call/complete/done-1")).status_code == 202
    samples = await scrape(client)
    assert value(samples, "callstream_live_calls") == 2
    assert value(samples, "callstream_calls_awaiting_result") == 1
    assert value(samples, "callstream_queued_jobs") == 1
    assert value(samples, "callstream_oldest_wait_seconds") >= 0


async def test_metrics_need_a_supervisor_key_when_keys_are_on(settings: Settings) -> None:
    async for client in client_for(keyed(settings)):
        assert (await client.get("/metrics")).status_code == 401
        ingest = {"x-api-key": KEYS[Role.INGEST]}
        assert (await client.get("/metrics", headers=ingest)).status_code == 403
        supervisor = {"authorization": f"Bearer {KEYS[Role.SUPERVISOR]}"}
        assert "callstream_packets_total" in str(await scrape(client, supervisor))


async def test_no_label_holds_a_call_id(client: AsyncClient) -> None:
    assert (await client.post("/v1/call/stream/secret-call-77", json=packet(0))).status_code
    answer = await client.get("/metrics")
    assert "secret-call-77" not in answer.text


async def test_error_answers_are_counted_by_code_whatever_path_sent_them(
    both_paths: AsyncClient,
) -> None:
    before = await scrape(both_paths)
    await both_paths.post(
        "/v1/call/stream/c1", content=b"{}", headers={"content-type": "text/plain"}
    )  # 415, from the routes
    await both_paths.post("/v1/call/stream/c1", json={"sequence": -1})  # 422
    await both_paths.post("/v1/call/complete/nobody")  # 404
    after = await scrape(both_paths)

    assert grew(before, after, "callstream_error_answers_total", code="unsupported_media_type") == 1
    assert grew(before, after, "callstream_error_answers_total", code="invalid_request") == 1
    assert grew(before, after, "callstream_error_answers_total", code="call_not_found") == 1
