"""Run one AI step with bounded, recorded retries: exponential backoff with jitter, a timeout per
attempt, an attempt budget and a deadline; a Retry-After is honoured; permanent errors are final."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from jobs.ai import AIError, PermanentAIError, TransientAIError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    step: str
    attempt: int
    outcome: str  # ok | error | timeout | rejected
    error: str | None
    started_at: datetime
    duration_ms: float


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    attempt_timeout_s: float
    backoff_base_s: float
    backoff_max_s: float
    budget_s: float  # total time the step may take, waits included


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
) -> T:
    """Call `request` until it succeeds or a budget runs out. Every attempt is recorded through
    `record` before the next one starts; `record` returning False means the lease was lost."""
    remaining = policy.max_attempts - attempts_already_failed
    if remaining <= 0:
        raise StepExhausted(f"{step}: no attempts left ({policy.max_attempts} already failed)")
    retrying = AsyncRetrying(
        stop=stop_after_attempt(remaining) | stop_before_delay(policy.budget_s),
        wait=_WaitHonouringRetryAfter(multiplier=policy.backoff_base_s, max=policy.backoff_max_s),
        retry=retry_if_exception_type(TransientAIError),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                number = attempts_already_failed + attempt.retry_state.attempt_number
                return await _one_attempt(step, number, request, policy, record)
    except TransientAIError as exc:
        raise StepExhausted(f"{step} failed after {number} attempts: {exc}") from exc
    except PermanentAIError as exc:
        raise StepExhausted(f"{step} failed permanently: {exc}") from exc
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


async def _one_attempt(
    step: str,
    number: int,
    request: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    record: Recorder,
) -> T:
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()

    async def keep(outcome: str, error: str | None) -> None:
        ms = (time.perf_counter() - t0) * 1000
        if not await record(AttemptRecord(step, number, outcome, error, started_at, ms)):
            raise LeaseLost(step)

    try:
        result = await asyncio.wait_for(request(), policy.attempt_timeout_s)
    except TimeoutError:
        message = f"{step} attempt {number} timed out after {policy.attempt_timeout_s}s"
        await keep("timeout", message)
        raise TransientAIError(message) from None
    except AIError as exc:
        outcome = "rejected" if isinstance(exc, PermanentAIError) else "error"
        log.info("%s attempt %d failed: %s", step, number, exc)
        await keep(outcome, str(exc))
        raise
    await keep("ok", None)
    return result
