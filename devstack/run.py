"""`make run`: embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set), migrations,
the API and one arq worker, supervised together. Ctrl-C stops everything, in order; a part that
fails to start, or dies, stops the rest. Nothing is left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from devstack.commands import api_command, migrate_command, worker_command
from devstack.servers import (
    EmbeddedPostgres,
    EmbeddedRedis,
    die_with_parent,
    free_port,
    stop_all,
    stop_process,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CALLSTREAM_DATA_DIR", ROOT / ".data"))


class Stop(Exception):
    pass


def _port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _on_signal(signum: int, _: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, cwd=ROOT, preexec_fn=die_with_parent)


def main() -> int:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    env = dict(os.environ)
    stoppers: list[Callable[[], None]] = []
    host, port = env.get("HOST", "127.0.0.1"), int(env.get("PORT", "8000"))
    try:
        if not env.get("DATABASE_URL"):
            pg = EmbeddedPostgres(DATA / "postgres", port=_port(54329)).start()
            stoppers.insert(0, pg.stop)
            env["DATABASE_URL"] = pg.url
        if not env.get("REDIS_URL"):
            fsync = env.get("REDIS_APPENDFSYNC", "everysec")
            redis = EmbeddedRedis(DATA / "redis", port=_port(63790), appendfsync=fsync).start()
            stoppers.insert(0, redis.stop)
            env["REDIS_URL"] = redis.url
        subprocess.run(migrate_command(), env=env, cwd=ROOT, check=True)
        web = _spawn(api_command(port, host), env)
        stoppers.insert(0, lambda: stop_process(web, signal.SIGTERM))
        worker = _spawn(worker_command(), env)
        stoppers.insert(1, lambda: stop_process(worker, signal.SIGTERM, timeout_s=30))
        wait_for_port(port, 30, web)
        print(
            f"\nCallstream is up.\n"
            f"  API        http://{host}:{port}   (docs: http://{host}:{port}/docs)\n"
            f"  PostgreSQL {env['DATABASE_URL']}\n"
            f"  Redis      {env['REDIS_URL']}\n"
            f"  data       {DATA}\n"
            f"Ctrl-C stops everything.\n",
            flush=True,
        )
        while True:
            for name, proc in (("API", web), ("worker", worker)):
                if proc.poll() is not None:
                    print(f"devstack: the {name} exited with {proc.returncode}; stopping all")
                    return 1
            time.sleep(0.5)
    except Stop as why:
        print(f"\ndevstack: {why}, stopping…", flush=True)
        return 0
    except Exception as exc:
        print(f"devstack: failed to start: {exc!r}; stopping what started", flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_all(stoppers)


if __name__ == "__main__":
    sys.exit(main())
