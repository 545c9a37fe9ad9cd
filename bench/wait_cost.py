"""What REDIS_WAIT_REPLICAS=1 costs (`python -m bench.wait_cost`): single-packet appends through
the API's own path to Redis (CallIntake, pipelined: concurrent requests share round trips), in
one process, on a single Redis with one replica and on a 3-master cluster with a replica each,
WAIT off and on, alternated `rounds` times so the machine's drift hits all four alike.

Per run: packets/s, p50/p99 of an append, our process's CPU per packet, and the Redis servers'
CPU per packet (masters and replicas). HTTP is left out on purpose: its cost is the same with or
without WAIT, and this machine's 2 shared cores would drown the difference in it. Loopback only;
everything started here is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvloop

from bench.common import cpu_seconds
from core.builders import feed_limits
from db.intake import CallIntake
from db.packets import NewPacket
from db.pipelining import Replication
from db.redis_client import close_redis, make_redis
from devstack.cluster import EmbeddedRedisCluster
from devstack.servers import EmbeddedRedis
from settings import Settings


@dataclass(frozen=True)
class Figures:
    topology: str
    wait: bool
    packets_per_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_us: float  # per packet
    redis_cpu_us: float  # per packet, every server of the topology


@contextmanager
def single_with_replica(data: Path) -> Iterator[tuple[str, list[int]]]:
    master = EmbeddedRedis(data / "master").start()
    replica = EmbeddedRedis(data / "replica")
    command = replica.command
    replica.command = lambda: [*command(), "--replicaof", "127.0.0.1", str(master.port)]  # type: ignore[method-assign]
    replica.start()
    try:
        time.sleep(1.0)  # the first sync of an empty master
        assert master.proc is not None
        assert replica.proc is not None
        yield master.url, [master.proc.pid, replica.proc.pid]
    finally:
        replica.stop()
        master.stop()


@contextmanager
def cluster_3x1(data: Path) -> Iterator[tuple[str, list[int]]]:
    cluster = EmbeddedRedisCluster(data / "cluster").start()
    try:
        yield cluster.url, [n.proc.pid for n in cluster.nodes if n.proc is not None]
    finally:
        cluster.stop()


async def measure(
    url: str, pids: list[int], topology: str, wait: bool, seconds: float, concurrency: int
) -> Figures:
    redis = make_redis(url, max_connections=64, connect_timeout_s=2, read_timeout_s=5)
    replication = Replication(1, 100) if wait else None
    intake = CallIntake(
        redis, feed=feed_limits(Settings(_env_file=None)), pipelined=True, replication=replication
    )
    latencies: list[float] = []
    sent = 0
    stop_at = 0.0

    async def caller(n: int) -> None:
        nonlocal sent
        sequence = 0
        call_id = f"wait-{topology}-{wait}-{n}-{time.monotonic_ns()}"
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            await intake.append(call_id, [NewPacket(sequence, 1e9 + sequence, "x" * 160)])
            latencies.append(time.perf_counter() - began)
            sequence += 1
            sent += 1

    await intake.append("warm-up", [NewPacket(0, 1e9, "x")])
    cpu_before = cpu_seconds(pids)
    own_before, began = time.process_time(), time.monotonic()
    stop_at = began + seconds
    await asyncio.gather(*(caller(n) for n in range(concurrency)))
    elapsed, own = time.monotonic() - began, time.process_time() - own_before
    redis_cpu = cpu_seconds(pids) - cpu_before
    await redis.flushall()
    await close_redis(redis)
    quantiles = statistics.quantiles(latencies, n=100)
    return Figures(
        topology, wait, sent / elapsed, quantiles[49] * 1e3, quantiles[98] * 1e3,
        own / sent * 1e6, redis_cpu / sent * 1e6,
    )  # fmt: skip


async def main(rounds: int, seconds: float, concurrency: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="callstream-wait-") as tmp,
        single_with_replica(Path(tmp)) as single,
        cluster_3x1(Path(tmp)) as cluster,
    ):
        results: list[Figures] = []
        for _ in range(rounds):
            for name, (url, pids) in (("single", single), ("cluster", cluster)):
                for wait in (False, True):
                    results.append(await measure(url, pids, name, wait, seconds, concurrency))
    print(f"{'topology':8} {'WAIT':4} {'packets/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'client CPU us/pkt':>17} {'Redis CPU us/pkt':>16}")  # fmt: skip
    for name in ("single", "cluster"):
        for wait in (False, True):
            runs = [r for r in results if r.topology == name and r.wait == wait]
            med = {
                field: statistics.median(getattr(r, field) for r in runs)
                for field in ("packets_per_s", "p50_ms", "p99_ms", "client_cpu_us", "redis_cpu_us")
            }
            print(
                f"{name:8} {'on' if wait else 'off':4} {med['packets_per_s']:9.0f} "
                f"{med['p50_ms']:7.2f} {med['p99_ms']:7.2f} {med['client_cpu_us']:17.1f} "
                f"{med['redis_cpu_us']:16.1f}"
            )
    print(f"medians of {rounds} rounds of {seconds}s, {concurrency} concurrent callers")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    uvloop.run(main(args.rounds, args.seconds, args.concurrency))
