"""What REDIS_WAIT_REPLICAS=1 costs (`python -m bench wait_cost`, not part of `make bench`; its
figures are quoted by hand in BENCHMARKS.md's reliability section): single-packet appends through
the API's own path to Redis (CallIntake, pipelined: concurrent requests share round trips), in
one process, on a single Redis with one replica and on a 3-master cluster with a replica each,
WAIT off and on, alternated `rounds` times so the machine's drift hits all four alike.

Per run: packets/s, p50/p99 of an append, our process's CPU per packet, and the Redis servers'
CPU per packet (masters and replicas). HTTP is left out on purpose: its cost is the same with or
without WAIT, and this machine's 2 shared cores would drown the difference in it. Loopback only;
everything started here is stopped.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import uvloop

from bench.cpu import CpuMeter
from bench.suite import Options, Outcome, command
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
        linked(replica.port)
        assert master.proc is not None
        assert replica.proc is not None
        yield master.url, [master.proc.pid, replica.proc.pid]
    finally:
        replica.stop()
        master.stop()


def linked(replica_port: int, timeout_s: float = 30) -> None:
    """Until the replica has made its first sync with the master (WAIT needs it)."""
    deadline = time.monotonic() + timeout_s
    with redis.Redis(port=replica_port) as client:
        while client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica on {replica_port} never synced")
            time.sleep(0.1)


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
    meter = CpuMeter(lambda: {"redis": pids})
    cpu_before = meter.read()
    own_before, began = time.process_time(), time.monotonic()
    stop_at = began + seconds
    await asyncio.gather(*(caller(n) for n in range(concurrency)))
    elapsed, own = time.monotonic() - began, time.process_time() - own_before
    redis_cpu = meter.spent(cpu_before, meter.read())["redis"]
    await redis.flushall()
    await close_redis(redis)
    quantiles = statistics.quantiles(latencies, n=100)
    return Figures(
        topology, wait, sent / elapsed, quantiles[49] * 1e3, quantiles[98] * 1e3,
        own / sent * 1e6, redis_cpu / sent * 1e6,
    )  # fmt: skip


@dataclass(frozen=True)
class Plan:
    rounds: int = 3
    seconds: float = 4.0
    concurrency: int = 64


QUICK = Plan(rounds=1, seconds=0.3, concurrency=8)
FIELDS = ("packets_per_s", "p50_ms", "p99_ms", "client_cpu_us", "redis_cpu_us")


async def measure_all(plan: Plan) -> list[Figures]:
    with (
        tempfile.TemporaryDirectory(prefix="callstream-wait-") as tmp,
        single_with_replica(Path(tmp)) as single,
        cluster_3x1(Path(tmp)) as cluster,
    ):
        results: list[Figures] = []
        for _ in range(plan.rounds):
            for name, (url, pids) in (("single", single), ("cluster", cluster)):
                for wait in (False, True):
                    results.append(
                        await measure(url, pids, name, wait, plan.seconds, plan.concurrency)
                    )
        return results


def section(plan: Plan, results: list[Figures]) -> list[str]:
    lines = [
        "## What WAIT costs: appends through the API's path to Redis",
        "",
        f"`{command('wait_cost')}`: medians of {plan.rounds} rounds of {plan.seconds:g} s,"
        f" {plan.concurrency} concurrent callers, in one process (no HTTP).",
        "",
        "| topology | WAIT | packets/s | p50 ms | p99 ms | client CPU us/packet |"
        " Redis CPU us/packet |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("single", "cluster"):
        for wait in (False, True):
            runs = [r for r in results if r.topology == name and r.wait == wait]
            med = {f: statistics.median(getattr(r, f) for r in runs) for f in FIELDS}
            lines.append(
                f"| {name} | {'on' if wait else 'off'} | {med['packets_per_s']:,.0f} |"
                f" {med['p50_ms']:.2f} | {med['p99_ms']:.2f} | {med['client_cpu_us']:.1f} |"
                f" {med['redis_cpu_us']:.1f} |"
            )
    return lines


def run(options: Options) -> Outcome:
    plan = QUICK if options.quick else Plan()
    results = uvloop.run(measure_all(plan))
    return Outcome(section(plan, results), {"runs": [r.__dict__ for r in results]})
