"""A single Redis with a replica, for the tests of REDIS_WAIT_REPLICAS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis as SyncRedis

from devstack.servers import EmbeddedRedis


@contextmanager
def master_and_replica(data: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    """Both started, the replica in sync; stopped after."""
    master = EmbeddedRedis(data / "master").start()
    replica = EmbeddedRedis(data / "replica")
    # The replica's role lives in its command line: a restart comes back as a replica.
    command = replica.command
    replica.command = lambda: [*command(), "--replicaof", "127.0.0.1", str(master.port)]  # type: ignore[method-assign]
    try:
        replica.start()
        wait_for_online_replica(master.port)
        yield master, replica
    finally:
        replica.stop()
        master.stop()


def wait_for_online_replica(master_port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    with SyncRedis(port=master_port, decode_responses=True) as master:
        while time.monotonic() < deadline:
            info = master.info("replication")
            if any("online" in str(v) for k, v in info.items() if k.startswith("slave")):
                return
            time.sleep(0.1)
    raise TimeoutError(f"no replica of 127.0.0.1:{master_port} came online in {timeout_s}s")
