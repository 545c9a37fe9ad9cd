"""bench/'s harness: the section writer, the store reset read from the catalog, the CPU meter."""

from __future__ import annotations

import subprocess
import sys

import asyncpg
import pytest

from bench.cpu import CpuMeter
from bench.ingestion_shapes import open_requests
from bench.sections import PREVIOUS_OPEN, markers, read_section, render
from bench.stores import ALEMBIC_TABLE, migrated_tables, truncate_all

TEXT = """# Benchmarks

Written by hand.

<!-- bench:one -->
## One

old figures
<!-- /bench:one -->

## By hand

kept
"""


def test_writing_a_section_replaces_only_what_its_markers_hold() -> None:
    text = render("one", ["## One", "", "new figures"], TEXT)
    assert text.startswith("# Benchmarks\n\nWritten by hand.\n\n<!-- bench:one -->\n## One\n")
    assert text.endswith("<!-- /bench:one -->\n\n## By hand\n\nkept\n")
    body = read_section("one", text)
    assert body is not None
    assert body.index("new figures") < body.index(PREVIOUS_OPEN) < body.index("old figures")


def test_the_previous_figures_are_kept_one_run_back_with_their_headings_made_bold() -> None:
    once = render("one", ["## One", "second"], TEXT)
    twice = render("one", ["## One", "third"], once)
    body = read_section("one", twice)
    assert body is not None
    assert "third" in body
    assert "**One**" in body  # the folded heading leaves the outline alone
    assert "second" in body
    assert "old figures" not in body  # two runs back: gone
    assert body.count(PREVIOUS_OPEN) == 1


def test_a_new_section_is_added_at_the_end() -> None:
    text = render("two", ["## Two", "figures"], TEXT)
    begin, end = markers("two")
    assert text.startswith(TEXT.rstrip("\n"))
    assert text.rstrip("\n").endswith(end)
    assert read_section("two", text) == "## Two\nfigures"
    assert begin in text


def _pg_dsn(server_urls: tuple[str, str]) -> str:
    return server_urls[0].replace("postgresql+asyncpg://", "postgresql://")


async def test_the_reset_empties_every_migrated_table_even_one_it_never_heard_of(
    server_urls: tuple[str, str],
) -> None:
    dsn = _pg_dsn(server_urls)
    conn = await asyncpg.connect(dsn)
    try:
        # As a migration of tomorrow would: a table bench/ has no list naming.
        await conn.execute("CREATE TABLE bench_new_table (n int)")
        await conn.execute("INSERT INTO bench_new_table VALUES (1), (2)")
        tables = await migrated_tables(conn)
        assert "public.bench_new_table" in tables
        assert "public.call" in tables
        assert all(ALEMBIC_TABLE not in t for t in tables)
        emptied = await truncate_all(dsn)
        assert emptied == tables
        assert await conn.fetchval("SELECT count(*) FROM bench_new_table") == 0
        # alembic's own row stays: the database is still at head.
        assert await conn.fetchval(f"SELECT count(*) FROM {ALEMBIC_TABLE}") == 1
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_new_table")
        await conn.close()


BURN = "import time\nwhile time.process_time() < 0.3: pass"
# /proc counts CPU in clock ticks (10 ms), a little behind the process's own clock.
BURNT = 0.25


@pytest.mark.timeout(60)
def test_the_meter_counts_a_child_that_has_exited_through_its_parent() -> None:
    # A parent (the role of PostgreSQL's postmaster) runs a child that burns 0.3 s of CPU and
    # exits; the parent waits for it, then lives on until told to stop.
    parent_code = (
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', {BURN!r}], check=True)\n"
        "print('done', flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        meter = CpuMeter(lambda: {"postgres": [parent.pid]})
        assert parent.stdout is not None
        assert parent.stdout.readline() == b"done\n"  # the child has exited and was reaped
        spent = meter.read()["postgres"]
        assert spent >= BURNT
    finally:
        assert parent.stdin is not None
        parent.stdin.close()
        parent.wait(10)


@pytest.mark.timeout(60)
def test_a_child_seen_alive_then_reaped_is_counted_once() -> None:
    # The child burns 0.6 s and waits; the meter sees it alive; then it exits and its parent
    # reaps it, so its time moves into the parent's children_*: counted there, not twice.
    parent_code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdin=subprocess.PIPE)\n"
        "sys.stdin.readline()\n"
        "child.stdin.close(); child.wait()\n"
        "print('reaped', flush=True)\n"
        "sys.stdin.read()\n"
    )
    burn = "import sys, time\nwhile time.process_time() < 0.6: pass\nsys.stdin.read()"
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code, burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert parent.stdin is not None
    assert parent.stdout is not None
    try:
        meter = CpuMeter(lambda: {"postgres": [parent.pid]})
        while meter.read()["postgres"] < 0.55:  # the child has burnt its share, alive
            pass
        parent.stdin.write(b"go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == b"reaped\n"
        spent = meter.read()["postgres"]
        # The child's 0.6 s and the parent's own start-up (about 0.03 s here): 0.63; counted
        # twice it was 1.15 or more.
        assert 0.55 <= spent < 0.9
    finally:
        parent.stdin.close()
        parent.wait(10)


@pytest.mark.timeout(60)
def test_the_meter_keeps_what_a_process_spent_until_the_reading_before_it_exited() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", BURN + "\nimport sys\nsys.stdin.read()"], stdin=subprocess.PIPE
    )
    meter = CpuMeter(lambda: {"workers": [child.pid]})
    try:
        while meter.read()["workers"] < BURNT:  # bounded by the test's timeout
            pass
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert meter.read()["workers"] >= BURNT  # gone now, still counted


def test_a_quick_run_cannot_write_benchmarks_md() -> None:
    from bench.__main__ import main

    with pytest.raises(SystemExit) as refused:
        main(["ingestion", "--quick", "--write"])
    assert refused.value.code == 2


def test_the_open_loop_shape_completes_each_wave_of_calls_after_its_last_packet() -> None:
    requests = open_requests("shape", rate=100, seconds=2.0, packets=10)
    # rate x seconds packets, and the workload's few duplicates (~2%)
    assert 200 <= sum(items for _, items in requests) <= 210
    completes = [n for n, (_, items) in enumerate(requests) if items == 0]
    assert len(completes) == 20  # one per call of 10 packets
    # each wave (a second's 10 calls) is completed after its own packets, before the next wave's
    first = completes[0]
    assert completes[:10] == list(range(first, first + 10))
    assert all(b"/stream/shape-w0-" in raw for raw, _ in requests[:first])
    assert all(b"/v1/call/complete/shape-w1-" in requests[n][0] for n in completes[10:])
