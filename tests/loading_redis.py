"""A Redis slow to read its AOF back, to catch it loading: after a restart, Redis listens at once
but answers most commands with LOADING until its data is back in memory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from devstack.servers import EmbeddedRedis


@dataclass
class SlowLoadingRedis(EmbeddedRedis):
    """Reads its AOF back at a key every `key_load_delay_us` (a debug setting of Redis's own test
    suite), and answers clients every KB of it meanwhile, as a large AOF would make it."""

    key_load_delay_us: int = 200

    def command(self) -> list[str]:
        return [*super().command(), "--key-load-delay", str(self.key_load_delay_us),
                "--loading-process-events-interval-bytes", "1024"]  # fmt: skip


def fill(server: EmbeddedRedis, keys: int) -> None:
    """`keys` keys written, and rewritten into the AOF's RDB base, which is what the delay slows."""
    with redis.Redis.from_url(server.url) as client:
        client.mset({f"key-{i}": i for i in range(keys)})
        client.bgrewriteaof()
        while client.info("persistence")["aof_rewrite_in_progress"]:
            time.sleep(0.01)


@dataclass
class _StartedListening(SlowLoadingRedis):
    """start() returns as soon as the port listens, as a Redis another supervisor runs would."""

    def _wait_loaded(self, stall_s: float) -> None:
        pass


@contextmanager
def redis_still_loading(data: Path, keys: int = 20_000) -> Iterator[EmbeddedRedis]:
    """A Redis just restarted and still loading (about 4 s for 20,000 keys); stopped after."""
    server = _StartedListening(data)
    try:
        fill(server.start(), keys)
        server.stop()
        server.start()
        yield server
    finally:
        server.stop()


def is_loading(server: EmbeddedRedis) -> bool:
    with redis.Redis.from_url(server.url) as client:
        return bool(client.info("persistence")["loading"])


def wait_until_loaded(server: EmbeddedRedis) -> None:
    while is_loading(server):
        time.sleep(0.05)
