"""Every suite of `python -m bench` runs its --quick smoke against the test suite's own
PostgreSQL and Redis: a change (a migration, a route, a setting) that breaks a benchmark fails
here, not months later in `make bench`. The figures are a smoke run's: nothing is asserted of
them but that the suite measured without a problem and made its section."""

from __future__ import annotations

import pytest

from bench.__main__ import ON_DEMAND, SUITES, run_suite
from bench.sections import REPORT, markers, read_section, render
from bench.stack import Stores
from bench.suite import Options

# What a suite may skip for, and the only thing: a model that is not bundled.
MISSING_MODEL = "model is missing"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("suite", [*SUITES, *ON_DEMAND])
def test_every_suite_runs_quick_and_writes_its_section(
    suite: str, server_urls: tuple[str, str]
) -> None:
    outcome = run_suite(suite, Options(quick=True, stores=Stores(*server_urls)))
    if outcome.skipped is not None:
        assert suite == "ai_quality"
        assert MISSING_MODEL in outcome.skipped
        pytest.skip(outcome.skipped)
    assert outcome.problems == []
    assert outcome.lines
    assert outcome.figures
    text = render(suite, outcome.lines, REPORT.read_text())
    begin, _ = markers(suite)
    assert text.count(begin) == 1
    assert read_section(suite, text) is not None


def test_every_suite_of_make_bench_has_its_section_in_benchmarks_md() -> None:
    text = REPORT.read_text()
    assert [s for s in SUITES if read_section(s, text) is None] == []
