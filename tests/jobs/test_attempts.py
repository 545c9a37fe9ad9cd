"""The AI step runner: backoff, budgets, Retry-After, permanent errors, recording."""

from __future__ import annotations

import time

import pytest

from db.worker_writes import AttemptRecord
from jobs.ai import (
    PermanentAIError,
    TransientAIError,
    attempt_deadline,
    sentiment_of,
    transcript_of,
)
from jobs.attempts import LeaseLost, RetryPolicy, StepExhausted, run_step

FAST = RetryPolicy(
    max_attempts=4, attempt_timeout_s=0.2, backoff_base_s=0.001, backoff_max_s=0.002, budget_s=5
)


class Provider:
    def __init__(self, *failures: Exception, delay_s: float = 0.0) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.delay_s = delay_s

    async def __call__(self) -> str:
        import asyncio

        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


class Ledger:
    def __init__(self, accept: bool = True) -> None:
        self.records: list[AttemptRecord] = []
        self.accept = accept

    async def __call__(self, record: AttemptRecord) -> bool:
        self.records.append(record)
        return self.accept


async def test_transient_errors_are_retried_until_success():
    provider, ledger = Provider(TransientAIError("a"), TransientAIError("b")), Ledger()

    assert await run_step("transcription", provider, FAST, ledger) == "ok"
    assert [(r.attempt, r.outcome) for r in ledger.records] == [
        (1, "error"),
        (2, "error"),
        (3, "ok"),
    ]


async def test_exhausting_the_attempt_budget_raises_with_the_reason():
    provider, ledger = Provider(*[TransientAIError("503")] * 4), Ledger()

    with pytest.raises(StepExhausted, match="failed after 4 attempts: 503"):
        await run_step("sentiment", provider, FAST, ledger)
    assert provider.calls == 4


async def test_attempts_failed_in_an_earlier_run_count_against_the_budget():
    provider, ledger = Provider(*[TransientAIError("503")] * 4), Ledger()

    with pytest.raises(StepExhausted):
        await run_step("sentiment", provider, FAST, ledger, attempts_already_failed=3)
    assert provider.calls == 1
    assert ledger.records[0].attempt == 4


async def test_permanent_errors_are_not_retried():
    provider, ledger = Provider(PermanentAIError("400 bad audio")), Ledger()

    with pytest.raises(StepExhausted, match="permanently: 400 bad audio"):
        await run_step("transcription", provider, FAST, ledger)
    assert provider.calls == 1
    assert ledger.records[0].outcome == "rejected"


async def test_a_slow_attempt_times_out_and_is_retried():
    provider, ledger = Provider(delay_s=0.5), Ledger()
    policy = RetryPolicy(2, attempt_timeout_s=0.05, backoff_base_s=0, backoff_max_s=0, budget_s=5)

    with pytest.raises(StepExhausted, match="timed out"):
        await run_step("transcription", provider, policy, ledger)
    assert [r.outcome for r in ledger.records] == ["timeout", "timeout"]


async def test_each_attempts_request_is_told_its_own_wall_clock_deadline():
    seen: list[float | None] = []

    async def request() -> str:
        seen.append(attempt_deadline.get())
        if len(seen) == 1:
            raise TransientAIError("503")
        return "ok"

    before = time.time()
    assert await run_step("transcription", request, FAST, Ledger()) == "ok"
    after = time.time()

    assert len(seen) == 2
    for deadline in seen:  # the attempt's timeout from when it started, in time.time()
        assert deadline is not None
        assert before + FAST.attempt_timeout_s <= deadline <= after + FAST.attempt_timeout_s
    assert attempt_deadline.get() is None  # nothing leaks past the attempt


async def test_retry_after_of_a_429_is_honoured():
    provider, ledger = Provider(TransientAIError("429", retry_after_s=0.3)), Ledger()

    started = time.monotonic()
    assert await run_step("transcription", provider, FAST, ledger) == "ok"
    assert time.monotonic() - started >= 0.3


async def test_a_lost_lease_stops_the_step():
    with pytest.raises(LeaseLost):
        await run_step("transcription", Provider(), FAST, Ledger(accept=False))


def test_mock_results_are_derived_from_the_packets():
    transcript = transcript_of(["I am", " angry ", "", "the line is broken"])

    assert transcript == "I am angry the line is broken"
    assert sentiment_of(transcript).label == "negative"
    assert sentiment_of("thanks, great").score == 1.0
    assert sentiment_of("hello").label == "neutral"


async def test_mock_outage_bursts_fail_every_request_inside_the_window():
    from jobs.ai import MockAI

    ai = MockAI(
        failure_rate=0.0, latency_min_s=0, latency_max_s=0, outage_period_s=10, outage_duration_s=2
    )

    assert ai.in_outage(1000.5)
    assert not ai.in_outage(1003.0)
    assert ai.in_outage(1011.9)
