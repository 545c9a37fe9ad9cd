"""bench/capacity: its pure parts, without a stack (the --quick smoke against the test suite's
stores is tests/bench/test_suites.py's): the steps asked for, the bar a step is judged by, and
the section with and without a run against another tree."""

from __future__ import annotations

from typing import Any

import pytest

from bench.capacity import LAG_TARGET_MS, QUICK, SLIP_TARGET_MS, per_frame_us, steps_of, verdict
from bench.capacity_report import GROUPS, comparison, one_line, over_client, section, stack_s

PER_CALL_MINUTE_MS = {
    "api": 300.0,
    "workers": 100.0,
    "redis": 50.0,
    "postgres": 50.0,
    "client": 200.0,
}


def step(calls: int = 10, **changes: Any) -> dict[str, Any]:
    """A step's figures as bench/real_calls_load.py's ramp step returns them, then judged."""
    figures: dict[str, Any] = {
        "calls": calls,
        "loadavg": "1.00 1.00 1.00",
        "frames_sent": 2 * 3000 * calls,
        "lost_frames": 0,
        "states": {"ARCHIVED": calls},
        "errors": 0,
        "status_lag_p50_ms": 40.0,
        "status_lag_p99_ms": 120.0,
        "lag_p99_ms": 90.0,
        "pace_slip_p99_ms": 5.0,
        # CPU seconds over the step, and per call-minute (calls of a minute: `calls` minutes)
        "cpu_s": {g: ms * calls / 1000 for g, ms in PER_CALL_MINUTE_MS.items()},
        "cpu_ms_per_call_minute": PER_CALL_MINUTE_MS,
    }
    figures.update(changes)
    figures.update(verdict(figures))
    figures["api_us_per_frame"] = per_frame_us(figures, "api")
    return figures


def test_steps_come_from_the_environment_or_the_default():
    assert steps_of(None, (1, 2)) == (1, 2)
    assert steps_of("", (1, 2)) == (1, 2)
    assert steps_of("60, 120,150", (1,)) == (60, 120, 150)
    with pytest.raises(ValueError, match="BENCH_CAPACITY_STEPS"):
        steps_of("0,10", (1,))


def test_a_step_holds_only_with_everything_stored_in_time_and_the_client_on_schedule():
    assert step()["holds"]
    assert step()["why_not"] == []
    lost = step(lost_frames=3)
    assert not lost["holds"]
    assert lost["why_not"] == ["3 frames lost"]
    assert not step(states={"ARCHIVED": 9, "FAILED": 1})["holds"]
    assert not step(errors=1)["holds"]
    assert step(status_lag_p99_ms=LAG_TARGET_MS + 1.4)["why_not"] == ["status lag p99 251 ms"]
    assert step(status_lag_p99_ms=LAG_TARGET_MS)["holds"]
    assert not step(status_lag_p99_ms=None)["holds"]  # no sample: nothing shown


def test_a_starved_client_fails_the_step_and_says_it_is_the_client():
    late = step(pace_slip_p99_ms=SLIP_TARGET_MS + 50)
    assert not late["holds"]
    assert "client is short of CPU" in late["why_not"][0]


def test_cpu_per_call_minute_of_the_stack_leaves_the_client_out():
    assert stack_s(step()) == pytest.approx(0.5)
    # 0.3 s of API CPU a call-minute, 6,000 frames (3,000 a track): 50 µs a frame.
    assert step()["api_us_per_frame"] == pytest.approx(50.0)


def figures(steps: list[dict[str, Any]], commit: str) -> dict[str, Any]:
    meta = {
        "commit": commit, "subject": "s", "tree": "/t", "started_at": "now", "machine": "m",
        "loadavg_start": "0", "loadavg_end": "0", "layout": "l", "speech": "espeak-ng",
        "plan": {"ramp_s": 60.0, "stagger_s": 20.0},
    }  # fmt: skip
    held = [s["calls"] for s in steps if s["holds"]]
    return {"meta": meta, "steps": steps, "most_calls_held": max(held, default=0)}


def test_the_section_sets_each_step_against_the_other_trees_step_of_its_size():
    before = figures([step(10), step(20, lost_frames=5)], "base")
    cheaper = {"api": 150.0, "workers": 100.0, "redis": 25.0, "postgres": 50.0, "client": 200.0}
    after = figures([step(10, cpu_ms_per_call_minute=cheaper), step(20), step(30)], "mine")
    lines = comparison(after, before)
    rows = [line for line in lines if line.startswith("| 10 |")]
    assert len(rows) == 2  # its row in the before table, and in the comparison
    assert "0.325 / 0.500 s (0.65x)" in rows[-1]
    assert "0.150 / 0.300 s (0.50x)" in rows[-1]
    assert "| 1.62 / 2.50 |" in rows[-1]  # the stack over the client, which did the same work
    assert not any(line.startswith("| 30 | **") for line in lines)  # no step of 30 before
    assert any(line.startswith("| 20 | not comparable |") for line in lines)  # 5 frames lost
    text = "\n".join(section(after, before, "python -m bench capacity --write"))
    assert "Most calls held: **30**" in text
    assert "most calls held 10" in text
    assert "no: 5 frames lost" in text


def test_the_stack_is_also_given_over_the_client_which_does_the_same_work_in_every_run():
    assert over_client(step()) == pytest.approx(2.5)
    assert "stack / client 2.50" in one_line(step())
    assert over_client(step(cpu_ms_per_call_minute=dict.fromkeys((*GROUPS, "client"), 0.0))) is None


def test_the_section_without_a_before_run_has_no_comparison():
    text = "\n".join(section(figures([step()], "mine"), None, "cmd"))
    assert "After / before" not in text


def test_the_quick_plan_stays_short():
    assert QUICK.ramp_s + QUICK.stagger_s <= 2
