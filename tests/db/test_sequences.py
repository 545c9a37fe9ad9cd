"""Gap arithmetic, without Redis."""

from db.sequences import missing_between_runs


def test_missing_between_runs_lists_the_gaps_between_runs():
    assert missing_between_runs([(1, 2), (5, 5), (9, 12)], cap=100, upto=12) == [3, 4, 6, 7, 8]


def test_missing_between_runs_is_capped_inside_a_long_gap():
    assert missing_between_runs([(0, 0), (2**53 - 1, 2**53 - 1)], cap=3, upto=2**53) == [1, 2, 3]


def test_missing_between_runs_never_reads_the_last_run_s_end():
    # db/lua/ingest.lua lets the last run's end lag behind: only its start may count.
    assert missing_between_runs([(0, 3), (6, 6)], cap=10, upto=9) == [4, 5]


def test_missing_between_runs_stops_at_the_last_sequence_the_caller_knows():
    assert missing_between_runs([(0, 0), (3, 3), (9, 9)], cap=10, upto=5) == [1, 2, 4, 5]


def test_one_run_has_no_gaps():
    assert missing_between_runs([(7, 7)], cap=10, upto=7) == []
    assert missing_between_runs([], cap=10, upto=7) == []
