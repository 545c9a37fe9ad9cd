"""core/metrics.py: counts summed across processes sharing PROMETHEUS_MULTIPROC_DIR, one process
alone without it, refusals by code, and the worker's AI counters. No server is started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from core import metrics
from core.errors import CallAlreadyCompleted
from jobs.ai import TransientAIError
from jobs.attempts import RetryPolicy, run_step

ROOT = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(
    max_attempts=3, attempt_timeout_s=0.5, backoff_base_s=0.001, backoff_max_s=0.002, budget_s=5
)


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def in_a_process(code: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", f"from core import metrics\n{code}"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout


def test_processes_sharing_a_directory_are_summed_by_any_scrape(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_DIR}
    shared = {**env, metrics.MULTIPROC_DIR: str(tmp_path / "metrics")}  # created on first use
    in_a_process("metrics.count_completion('idle')", shared)  # a worker
    in_a_process("metrics.count_completion('idle'); metrics.LEASE_RECOVERIES.inc(2)", shared)
    text = in_a_process("import sys; sys.stdout.write(metrics.render().decode())", shared)
    assert sample(text, "callstream_calls_completed_total", reason="idle") == 2
    assert sample(text, "callstream_lease_recoveries_total") == 2
    alone = in_a_process("import sys; sys.stdout.write(metrics.render().decode())", env)
    assert sample(alone, "callstream_calls_completed_total", reason="idle") == 0
    assert "process_cpu_seconds_total" in alone or "python_info" in alone  # this process's own


def test_a_forked_process_counts_in_a_file_of_its_own_without_asking_its_pid_per_count(
    tmp_path: Path,
) -> None:
    # The process identifier is read once and again after a fork (metrics.process_id): a
    # child's counts go to its own file, summed with the parent's, and no count calls getpid.
    env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_DIR}
    shared = {**env, metrics.MULTIPROC_DIR: str(tmp_path / "metrics")}
    code = """
import os, sys
from unittest import mock
metrics.count_completion('idle')
with mock.patch('os.getpid', side_effect=AssertionError('getpid per count')):
    metrics.count_completion('idle')
child = os.fork()
if child == 0:
    metrics.count_completion('idle')
    os._exit(0)
os.waitpid(child, 0)
sys.stdout.write(f"{os.getpid()} {child}")
"""
    parent, child = in_a_process(code, shared).split()
    counters = sorted(p.name for p in (tmp_path / "metrics").glob("counter_*.db"))
    assert counters == sorted([f"counter_{parent}.db", f"counter_{child}.db"])
    text = in_a_process("import sys; sys.stdout.write(metrics.render().decode())", shared)
    assert sample(text, "callstream_calls_completed_total", reason="idle") == 3


def test_a_refusal_counts_its_packets_by_code() -> None:
    name = "callstream_packets_refused_total"
    before = sample(metrics.render().decode(), name, code="call_completed")
    try:
        with metrics.counting_refusals(3):
            raise CallAlreadyCompleted("done")
    except CallAlreadyCompleted:
        pass
    assert sample(metrics.render().decode(), name, code="call_completed") == before + 3


def test_live_figures_are_gauges() -> None:
    figures = metrics.LiveFigures(3, 1, 2, 2, 4.5)
    text = metrics.render(figures).decode()
    assert "# TYPE callstream_live_calls gauge" in text
    assert sample(text, "callstream_live_calls") == 3
    assert sample(text, "callstream_oldest_wait_seconds") == 4.5


async def test_ai_requests_are_counted_by_step_and_outcome() -> None:
    failures = [TransientAIError("flaky")]

    async def provider() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    async def record(_: object) -> bool:
        return True

    def count(name: str, **labels: str) -> float:
        return sample(metrics.render().decode(), name, **labels)

    ok, error = {"step": "sentiment", "outcome": "ok"}, {"step": "sentiment", "outcome": "error"}
    before = [
        count("callstream_ai_requests_total", **ok),
        count("callstream_ai_requests_total", **error),
    ]
    retries = count("callstream_ai_retries_total", step="sentiment")
    timed = count("callstream_ai_request_duration_seconds_count", step="sentiment")
    assert await run_step("sentiment", provider, FAST, record) == "ok"
    assert count("callstream_ai_requests_total", **ok) == before[0] + 1
    assert count("callstream_ai_requests_total", **error) == before[1] + 1
    assert count("callstream_ai_retries_total", step="sentiment") == retries + 1
    assert count("callstream_ai_request_duration_seconds_count", step="sentiment") == timed + 2
