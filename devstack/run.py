"""`make run`: embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set), migrations,
the API and one arq worker, supervised together. Ctrl-C stops everything, in order; a part that
fails to start, or dies, stops the rest. Nothing is left behind."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from core.access import KEY_VARIABLES, is_loopback, key_ring
from devstack.processes import free_port
from devstack.stack import ROOT, Stack
from settings import Settings

DATA = Path(os.environ.get("CALLSTREAM_DATA_DIR", ROOT / ".data"))


class Stop(Exception):
    pass


def _port(preferred: int) -> int:
    """The preferred port if it is free (stable URLs from one run to the next), else any."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _on_signal(signum: int, _: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _access(keys_on: bool) -> str:
    if keys_on:
        return "  access     API keys required (Authorization: Bearer <key>, or X-API-Key)\n"
    example = " ".join(
        f"{name}={secrets.token_urlsafe(24)}"
        for name in ("INGEST_API_KEYS", "SUPERVISOR_API_KEYS", "ADMIN_API_KEYS")
    )
    return (
        "  access     open, to this machine only: no API key is set. To require keys, e.g.:\n"
        f"             {example} make run\n"
    )


def _audiosocket(env: dict[str, str]) -> str:
    caller, agent = env.get("AUDIOSOCKET_ADDR", ""), env.get("AUDIOSOCKET_OUTBOUND_ADDR", "")
    if not caller and not agent:
        return ""
    return f"  AudioSocket caller {caller or 'off'}, agent {agent or 'off'} (docs/pbx.md)\n"


def _banner(stack: Stack, host: str, port: int, layout: str, keys_on: bool) -> str:
    return (
        f"\nCallstream is up ({layout}).\n"
        f"  API        http://{host}:{port}   (docs: http://{host}:{port}/docs)\n"
        + _audiosocket(stack.env)
        + _access(keys_on)
        + f"  PostgreSQL {stack.env['DATABASE_URL']}\n"
        f"  Redis      {stack.env['REDIS_URL']}\n"
        f"  data       {stack.data_dir}\n"
        f"Ctrl-C stops everything.\n"
    )


def main() -> int:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    env = dict(os.environ)
    host, port = env.get("HOST", "127.0.0.1"), int(env.get("PORT", "8000"))
    fsync = env.get("REDIS_APPENDFSYNC", "everysec")
    # As many API processes and workers as the machine has cores. uvicorn reads
    # WEB_CONCURRENCY itself; the processes share nothing but Redis and PostgreSQL.
    cores = str(os.cpu_count() or 1)
    env.setdefault("WEB_CONCURRENCY", cores)
    # Asterisk AudioSocket's listeners (caller, agent): every API process listens on both.
    env.setdefault("AUDIOSOCKET_ADDR", "127.0.0.1:9092")
    env.setdefault("AUDIOSOCKET_OUTBOUND_ADDR", "127.0.0.1:9093")
    workers = int(env.get("WORKER_PROCESSES", cores))
    keys_on = key_ring(Settings()).enabled
    if not keys_on and not is_loopback(host):
        print(
            f"devstack: refusing to serve {host} without API keys: set {KEY_VARIABLES} "
            "(or serve 127.0.0.1)",
            flush=True,
        )
        return 1
    # The processes write to our console; the stores and the migrations to files under DATA.
    stack = Stack(DATA, env=env, log_to_files=False, appendfsync=fsync)
    try:
        if not env.get("DATABASE_URL"):
            stack.start_postgres(port=_port(54329))
        if not env.get("REDIS_URL"):
            stack.start_redis(port=_port(63790))
        stack.migrate()
        # Started before the API so that, stopped in reverse, the API closes first.
        for _ in range(workers):
            stack.start_worker()
        # uvicorn's own start and stop lines are detail too: shown with LOG_LEVEL=DEBUG only.
        verbose = env.get("LOG_LEVEL", "INFO").upper() == "DEBUG"
        stack.start_api(port, host, extra_args=() if verbose else ("--log-level", "warning"))
        layout = f"{env['WEB_CONCURRENCY']} API processes, {workers} workers"
        print(_banner(stack, host, port, layout, keys_on), flush=True)
        part, code = stack.watch()
        print(f"devstack: {part.name} exited with {code}; stopping all", flush=True)
        return 1
    except Stop as why:
        print(f"\ndevstack: {why}, stopping…", flush=True)
        return 0
    except Exception as exc:
        print(f"devstack: failed to start: {type(exc).__name__}: {exc}", flush=True)
        print("devstack: stopping what started", flush=True)
        return 1
    finally:
        # A second Ctrl-C must not cut the orderly stop short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop_all()


if __name__ == "__main__":
    sys.exit(main())
