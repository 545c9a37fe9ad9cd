"""bench/local_model: its pure parts, without a stack (the --quick smoke against the test suite's
stores is tests/bench/test_suites.py's): the workloads asked for, the repetitive one's audio, and
a run's row."""

from __future__ import annotations

import pytest

from bench import local_model
from bench.local_model import Plan, both_speaking, plans, report, row_of
from bench.real_calls_client import CallRun
from bench.real_calls_frames import TwoTrackCall, ticks_of
from simulate import speech


def test_the_runs_asked_for_come_from_the_environment_with_make_runs_settings_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LOCAL_MODEL_SETTINGS", raising=False)
    monkeypatch.setenv("LOCAL_MODEL_WORKLOADS", "repetitive")
    assert plans(quick=False) == [Plan(workload="repetitive", settings="defaults")]

    monkeypatch.setenv("LOCAL_MODEL_SETTINGS", "generous")
    assert plans(quick=False)[0].settings == "generous"
    assert local_model.SETTINGS["generous"] == {"AI_ATTEMPT_TIMEOUT_S": "120", "WORKER_NICE": "0"}
    assert local_model.SETTINGS["defaults"] == {}  # nothing but make run's own

    monkeypatch.setenv("LOCAL_MODEL_WORKLOADS", "repetitive,music")
    with pytest.raises(SystemExit, match="music"):
        plans(quick=False)


def test_the_repetitive_workload_is_the_shipped_recordings_a_short_loop_on_each_track() -> None:
    dialogue = both_speaking("repetitive")

    assert len(dialogue.inbound) == len(dialogue.outbound)  # both tracks as long
    loop_s = len(dialogue) * speech.FRAME_MS / 1000
    assert 5 <= loop_s <= 15, loop_s  # said again every few seconds: repetitive
    assert dialogue.inbound != dialogue.outbound  # each party its own sentences
    assert "repetitive" in dialogue.source


def test_a_runs_row_says_its_workload_settings_cost_per_window_and_attempts() -> None:
    plan = Plan(calls=1, seconds=60.0, workload="repetitive", settings="defaults")
    found = {
        "windows": [
            {"call_id": "local-0", "track": 0, "seconds": 28.0, "live": True},
            {"call_id": "local-0", "track": 1, "seconds": 9.0, "live": False},
        ],
        "attempts": {"ok": 2, "timeout": 1},
    }
    cpu = {"pool": 6.0, "workers": 7.0, "api": 1.0, "redis": 0.5, "postgres": 0.5, "client": 9.0}
    cpu["pool_start"] = 1.6  # the pools' start-up, apart from the calls

    call = CallRun(TwoTrackCall("local-0", ticks_of(60.0), both_speaking("repetitive")))

    r = report([call], [], cpu, found, plan, "shipped recordings looped")

    assert r["pool_cpu_per_min"] == 6.0
    assert r["stack_cpu_per_min"] == 9.0  # the client is not the stack
    assert r["pool_cpu_per_window"] == 3.0
    row = row_of(r)
    assert row.startswith("| repetitive (shipped recordings looped) | defaults | 1.6 s | 6.00 s")
    assert "1 (28.0 s) / 1 (9.0 s)" in row
    assert "2 ok, 1 timeout" in row


def test_a_run_that_told_no_utterance_is_a_problem_that_says_how_its_calls_ended() -> None:
    told = {"workload": "espeak", "utterances": 4, "states": ["ARCHIVED"], "attempts": {"ok": 2}}
    starved = {
        "workload": "repetitive",
        "utterances": 0,
        "states": ["FAILED"],
        "attempts": {"timeout": 3, "ok": 1},
    }

    assert local_model.problems_of([told, starved]) == [
        "repetitive: no utterance was told (calls FAILED; transcription attempts: 1 ok, 3 timeout)"
    ]


def test_the_smoke_run_is_not_starved_by_the_suite_it_shares_the_cores_with() -> None:
    (quick,) = plans(quick=True)

    assert quick.settings == "generous"  # the workers un-niced, attempts of 120 s
    assert (quick.calls, quick.seconds, quick.workload) == (1, 6.0, "repetitive")
