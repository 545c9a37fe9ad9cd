"""Run one unit of AI work (a transcription window, the sentiment step) with bounded, recorded
retries: exponential backoff with jitter, a timeout per attempt, an attempt budget of its own and
a deadline; a Retry-After is honoured; permanent errors are final.

A budget of attempts belongs to a unit of work, never to a call: a call of an hour has a hundred
windows, and a count shared by them would fail it for a handful of transient errors spread over
its length. The call as a whole is bounded by time (CallDeadline) and by the shared breaker and
limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from core import metrics
from db.worker_writes import AttemptRecord
from jobs.ai import AIError, PermanentAIError, TransientAIError, attempt_deadline
from jobs.ai_limit import AiLimiter, NoSlotInTime
from jobs.breaker import BreakerOpen, CircuitBreaker
from settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    attempt_timeout_s: float
    backoff_base_s: float
    backoff_max_s: float
    budget_s: float  # the time a call's AI work may take in one run, waits included


def policy_of(settings: Settings) -> RetryPolicy:
    """The AI steps' retry policy, from AI_MAX_ATTEMPTS, AI_ATTEMPT_TIMEOUT_S, AI_BACKOFF_*_S and
    AI_CALL_BUDGET_S: one for the final run and a live call's windows alike."""
    return RetryPolicy(
        max_attempts=settings.ai_max_attempts,
        attempt_timeout_s=settings.ai_attempt_timeout_s,
        backoff_base_s=settings.ai_backoff_base_s,
        backoff_max_s=settings.ai_backoff_max_s,
        budget_s=settings.ai_call_budget_s,
    )


class CallDeadline:
    """The time.monotonic() instant a call's AI work in one run must end by: AI_CALL_BUDGET_S
    from its start, grown by each window's allowance (a real provider's work grows with the
    audio)."""

    def __init__(self, budget_s: float) -> None:
        self.at = time.monotonic() + budget_s

    def extend(self, seconds: float) -> float:
        self.at += seconds
        return self.at


class StepExhausted(Exception):
    """The step's attempt or time budget ran out; the message is the reason kept on the call."""


class LeaseLost(Exception):
    """Another worker took the call while this one was working on it; stop without writing."""


Recorder = Callable[[AttemptRecord], Awaitable[bool]]


class _WaitHonouringRetryAfter(wait_random_exponential):
    """Jittered exponential backoff, but never shorter than a provider's Retry-After."""

    def __call__(self, retry_state: RetryCallState) -> float:
        backoff = float(super().__call__(retry_state))
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, TransientAIError) and exc.retry_after_s is not None:
            return max(backoff, exc.retry_after_s)
        return backoff


async def run_step(
    step: str,
    request: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    record: Recorder,
    attempts_already_failed: int = 0,
    *,
    window: str | None = None,
    live: bool = False,
    deadline: float | None = None,
    breaker: CircuitBreaker | None = None,
    limiter: AiLimiter | None = None,
) -> T:
    """Call `request` until it succeeds or a budget runs out: the unit's attempts
    (`attempts_already_failed` of them spent by an earlier run of this unit) or the deadline.
    Every attempt is recorded through `record`, stamped with its `window` and whether it was made
    `live`, before the next one starts; `record` returning False means the lease was lost.
    `deadline` is a time.monotonic() instant shared by the call's steps (default: the budget)."""
    remaining = policy.max_attempts - attempts_already_failed
    if remaining <= 0:  # an earlier run of this unit spent its budget
        raise StepExhausted(f"{step}: no attempts left ({policy.max_attempts} already failed)")
    if deadline is None:
        deadline = time.monotonic() + policy.budget_s
    attempt = _Attempt(step, request, policy, record, deadline, breaker, limiter, window, live)
    retrying = AsyncRetrying(
        stop=stop_after_attempt(remaining)
        | stop_before_delay(max(deadline - time.monotonic(), 0.0)),
        wait=_WaitHonouringRetryAfter(multiplier=policy.backoff_base_s, max=policy.backoff_max_s),
        retry=retry_if_exception_type(TransientAIError),
        reraise=True,
    )
    number = attempts_already_failed
    phase = "live" if live else "final"
    try:
        async for try_ in retrying:
            with try_:
                number = attempts_already_failed + try_.retry_state.attempt_number
                if try_.retry_state.attempt_number > 1:
                    metrics.AI_RETRIES.labels(step).inc()
                return await attempt.run(number)
    except TransientAIError as exc:
        metrics.AI_UNITS_EXHAUSTED.labels(step, phase).inc()
        raise StepExhausted(f"{step} failed after {number} attempts: {exc}") from exc
    except PermanentAIError as exc:
        metrics.AI_UNITS_EXHAUSTED.labels(step, phase).inc()
        raise StepExhausted(f"{step} failed permanently: {exc}") from exc
    except (BreakerOpen, NoSlotInTime) as exc:
        metrics.AI_UNITS_EXHAUSTED.labels(step, phase).inc()
        raise StepExhausted(f"{step} gave up after {number} attempts: {exc}") from exc
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


class _Attempt(Generic[T]):
    """One request to the provider: through the breaker, under a timeout, and recorded."""

    def __init__(
        self,
        step: str,
        request: Callable[[], Awaitable[T]],
        policy: RetryPolicy,
        record: Recorder,
        deadline: float,
        breaker: CircuitBreaker | None,
        limiter: AiLimiter | None,
        window: str | None,
        live: bool,
    ) -> None:
        self.step, self.request, self.policy = step, request, policy
        self.record, self.deadline = record, deadline
        self.breaker, self.limiter = breaker, limiter
        self.window, self.live = window, live

    async def run(self, number: int) -> T:
        """Waiting for the breaker or for a slot spends the deadline, never an attempt; the
        slot is held for the request alone, not while the attempt is recorded."""
        if self.breaker is not None:
            await self.breaker.wait_until_callable(self.deadline)
        timeout = max(min(self.policy.attempt_timeout_s, self.deadline - time.monotonic()), 0.001)
        slot = self.limiter.slot(self.deadline) if self.limiter else contextlib.nullcontext()
        async with slot:
            started_at = datetime.now(UTC)
            t0 = time.perf_counter()
            ends = attempt_deadline.set(time.time() + timeout)  # seen by the request's task
            try:
                result = await asyncio.wait_for(self.request(), timeout)
            except (TimeoutError, AIError) as exc:
                failure: TimeoutError | AIError | None = exc
            else:
                failure = None
            finally:
                attempt_deadline.reset(ends)
        ms = (time.perf_counter() - t0) * 1000
        if failure is None:
            metrics.count_ai_request(self.step, "ok", ms / 1000)
            await self._provider_answered()
            await self._keep(self._record(number, "ok", None, started_at, ms))
            return result
        raise await self._failed(number, failure, timeout, started_at, ms)

    async def _failed(
        self,
        number: int,
        failure: TimeoutError | AIError,
        timeout_s: float,
        started_at: datetime,
        ms: float,
    ) -> AIError:
        """Record a failed attempt; returns the error to raise (retried only if transient)."""
        if isinstance(failure, TimeoutError):
            message = f"{self.step} attempt {number} timed out after {timeout_s:.1f}s"
            error: AIError = TransientAIError(message)
            outcome = "timeout"
        else:
            error, message = failure, str(failure)
            outcome = "rejected" if isinstance(failure, PermanentAIError) else "error"
        log.debug("%s attempt %d failed: %s", self.step, number, message)
        metrics.count_ai_request(self.step, outcome, ms / 1000)
        if outcome == "rejected":
            await self._provider_answered()
        else:
            await self._provider_failed()
        retry_after = getattr(error, "retry_after_s", None)
        if self.limiter is not None and retry_after is not None:
            await self.limiter.pause(retry_after)  # the provider asked everyone to wait
        await self._keep(self._record(number, outcome, message, started_at, ms))
        return error

    def _record(
        self, number: int, outcome: str, error: str | None, started_at: datetime, ms: float
    ) -> AttemptRecord:
        return AttemptRecord(
            self.step, number, outcome, error, started_at, ms, self.window, self.live
        )

    async def _keep(self, attempt: AttemptRecord) -> None:
        if not await self.record(attempt):
            raise LeaseLost(self.step)

    async def _provider_failed(self) -> None:
        if self.breaker is not None:
            await self.breaker.record_failure()

    async def _provider_answered(self) -> None:
        if self.breaker is not None:
            await self.breaker.record_success()
