"""Ingestion on a Redis Cluster against a single Redis (`python -m bench cluster`;
issue #12's target: the cluster within 15% of the single Redis).

Two API deployments as `make run` starts one (devstack/commands.py, WEB_CONCURRENCY = the
machine's cores), alike but for where the call keys live: (a) one embedded Redis, (b) a 3-master
EmbeddedRedisCluster (REDIS_URL=redis+cluster://..., QUEUE_REDIS_URL on the single Redis, as
production runs it). Single-packet ingestion (bench/load.py: concurrent calls, closed loop) is
measured on (a) and (b) alternately, `rounds` times, so the machine's drift hits both; per round:
packets/s, p50/p99, the API processes' CPU per packet, the Redis servers' CPU per packet, and
Redis's own counts summed over the servers (INFO commandstats: commands per packet by name;
INFO stats total_reads_processed: socket reads, i.e. request batches, per packet). Then, if asked,
a worker drain (bench/backhalf.py's) on each.

The cluster has no replicas (replicas_per_master=0): the single Redis has none either, and on
this machine a replica would be another process on the same cores, so the comparison would
measure the cores, not the cluster. Loopback only; everything started here is stopped.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import redis
import uvloop
from redis.asyncio import Redis

from bench import backhalf, cluster_report
from bench.cpu import CpuMeter
from bench.load import closed_loop, send_all, single_packet_workload
from bench.sections import loadavg
from bench.stack import BenchStack, Layout
from bench.suite import Options, Outcome, command
from devstack.stack import Process

TOPOLOGIES = ("single", "cluster")
# Our own polling of the servers, not the API's work.
OWN_COMMANDS = {"info"}


@dataclass(frozen=True)
class Plan:
    rounds: int = 3
    calls: int = 200  # concurrent calls per round
    packets: int = 300  # per call: more than a round can send, so the loop never runs dry
    connections: int = 64
    seconds: float = 5.0
    api_processes: int = os.cpu_count() or 1  # as make run starts them (WEB_CONCURRENCY)
    masters: int = 3
    drain_rounds: int = 2
    drain_calls: int = 300
    drain_packets: int = 10
    drain_workers: int = 1


QUICK = Plan(
    api_processes=1,
    rounds=1, calls=10, packets=20, connections=8, seconds=0.3, drain_rounds=1, drain_calls=10,
    drain_packets=3,
)  # fmt: skip


@dataclass(frozen=True)
class Server:
    """One Redis process whose counts and CPU are summed into its topology's."""

    port: int
    pid: int

    def info(self, section: str) -> dict[str, Any]:
        with redis.Redis(port=self.port, socket_timeout=5) as client:
            answer: dict[str, Any] = client.info(section)
            return answer


@dataclass(frozen=True)
class Topology:
    name: str
    api: Process
    servers: list[Server]  # where the call keys live
    queue: Server  # arq's single Redis
    env: dict[str, str]  # what the API and the workers run with

    def every_server(self) -> list[Server]:
        return list(dict.fromkeys([*self.servers, self.queue]))

    def meter(self, servers: list[Server]) -> CpuMeter:
        return CpuMeter(lambda: {"api": [self.api.pid], "redis": [s.pid for s in servers]})


@dataclass(frozen=True)
class Counts:
    """What the API processes and the Redis servers had done at one instant."""

    api_cpu_s: float
    redis_cpu_s: float
    commands: Counter[str]
    reads: int

    @classmethod
    def of(cls, t: Topology, servers: list[Server] | None = None) -> Counts:
        """`servers`: the call keys' (the default), or others, e.g. with the queue's."""
        servers = t.servers if servers is None else servers
        commands: Counter[str] = Counter()
        reads = 0
        for server in servers:
            for name, stats in server.info("commandstats").items():
                commands[name.removeprefix("cmdstat_")] += int(stats["calls"])
            reads += int(server.info("stats")["total_reads_processed"])
        cpu = t.meter(servers).read()
        return cls(
            api_cpu_s=cpu["api"],
            redis_cpu_s=cpu["redis"],
            commands=commands,
            reads=reads,
        )


async def ingestion_round(t: Topology, plan: Plan, tag: str) -> dict[str, Any]:
    work = single_packet_workload(f"{tag}-{t.name}", plan.calls, plan.packets, seed=3)
    before = Counts.of(t)
    res = await closed_loop(t.api.port or 0, work.requests, plan.connections, plan.seconds)
    after = Counts.of(t)
    # Outside the window: the calls end (else the idle sweep ends them during a later round).
    await send_all(t.api.port or 0, work.completes, plan.connections)
    packets = res.items
    commands = after.commands - before.commands
    for own in OWN_COMMANDS:
        commands.pop(own, None)
    return {
        "topology": t.name,
        "packets_per_s": res.rate,
        "packets": packets,
        "p50_ms": res.pct_ms(0.50),
        "p99_ms": res.pct_ms(0.99),
        "errors": res.errors,
        "statuses": {str(k): v for k, v in sorted(res.statuses.items())},
        "api_cpu_us_per_packet": 1e6 * (after.api_cpu_s - before.api_cpu_s) / packets,
        "redis_cpu_us_per_packet": 1e6 * (after.redis_cpu_s - before.redis_cpu_s) / packets,
        "commands_per_packet": sum(commands.values()) / packets,
        "by_command_per_packet": {
            name: n / packets for name, n in commands.most_common() if n / packets >= 0.001
        },
        "reads_per_packet": (after.reads - before.reads) / packets,
    }


class TopologyBench(backhalf.Bench):
    """bench/backhalf.py's drain against one topology: its workers get the topology's Redis
    settings (the stack's reset empties every Redis, the cluster's masters too)."""

    def __init__(self, stack: BenchStack, queue: Redis, t: Topology) -> None:
        super().__init__(stack, queue)
        self.topology = t

    def start_workers(self, n: int, env: dict[str, str]) -> list[Process]:
        return super().start_workers(n, {**self.topology.env, **env})


async def drains(
    stack: BenchStack, queue: Redis, topologies: list[Topology], plan: Plan
) -> list[dict[str, Any]]:
    drain_plan = backhalf.Plan(drain_calls=plan.drain_calls, packets=plan.drain_packets)
    out = []
    for n in range(plan.drain_rounds):
        for t in topologies:
            b = TopologyBench(stack, queue, t)
            before = Counts.of(t, t.every_server())
            d = await backhalf.drain(
                b, t.api.port or 0, drain_plan, plan.drain_workers, f"d{n}-{t.name}"
            )
            commands = Counts.of(t, t.every_server()).commands - before.commands
            for own in OWN_COMMANDS | {"flushall", "flushdb"}:  # ours, and the resets
                commands.pop(own, None)
            d["topology"] = t.name
            d["commands_per_call"] = sum(commands.values()) / plan.drain_calls
            d["evalsha_per_call"] = commands["evalsha"] / plan.drain_calls
            d["by_command_per_call"] = {
                name: n / plan.drain_calls for name, n in commands.most_common(12)
            }
            print(
                f"drain {t.name:8}: {d['finished']}/{d['calls']} in {d['seconds']:.2f}s = "
                f"{d['calls_per_s']:.0f} calls/s, worker {d['cpu_ms_per_call']:.2f} ms CPU/call, "
                f"{d['commands_per_call']:.1f} Redis commands/call "
                f"({d['evalsha_per_call']:.1f} EVALSHA)"
            )
            out.append(d)
    return out


def medians(rounds: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {
        name: {k: statistics.median(r[k] for r in rounds if r["topology"] == name) for k in keys}
        for name in TOPOLOGIES
        if any(r["topology"] == name for r in rounds)
    }


async def measure(plan: Plan, options: Options) -> dict[str, Any]:
    with BenchStack(Layout(api_processes=0, workers=0), options.stores) as stack:
        # The single Redis is always ours: its CPU and counts are measured.
        single = stack.start_extra_redis("redis-single")
        if stack.stack.redis is None:  # the test suite's stores: the queue's Redis is ours
            stack.stack.redis = single
        cluster = stack.stack.start_redis_cluster(masters=plan.masters, replicas_per_master=0)
        envs = {
            "single": {"REDIS_URL": single.url, "QUEUE_REDIS_URL": single.url},
            "cluster": {"REDIS_URL": cluster.url, "QUEUE_REDIS_URL": single.url},
        }
        servers = {
            "single": [Server(single.port, pid_of(single.proc))],
            "cluster": [Server(n.port, pid_of(n.proc)) for n in cluster.masters()],
        }
        topologies = []
        for name in TOPOLOGIES:
            api = stack.start_api(env=envs[name], name=f"api-{name}", processes=plan.api_processes)
            queue_server = Server(single.port, pid_of(single.proc))
            topologies.append(Topology(name, api, servers[name], queue_server, envs[name]))
        for t in topologies:  # connections, scripts loaded, every API process up
            warm = single_packet_workload(f"warm-{t.name}", 40, 40)
            await closed_loop(t.api.port or 0, warm.requests, plan.connections, plan.seconds)
            await send_all(t.api.port or 0, warm.completes, plan.connections)
        figures: dict[str, Any] = {"plan": asdict(plan), "loadavg_start": loadavg()}
        rounds = []
        for n in range(plan.rounds):
            for t in topologies:
                r = await ingestion_round(t, plan, f"r{n}")
                print_round(r)
                rounds.append(r)
        figures["rounds"] = rounds
        figures["medians"] = medians(
            rounds,
            ("packets_per_s", "p50_ms", "p99_ms", "api_cpu_us_per_packet",
             "redis_cpu_us_per_packet", "commands_per_packet", "reads_per_packet"),
        )  # fmt: skip
        queue = Redis.from_url(single.url)
        try:
            figures["drains"] = await drains(stack, queue, topologies, plan)
        finally:
            await queue.aclose()
        figures["drain_medians"] = medians(
            figures["drains"],
            ("calls_per_s", "cpu_ms_per_call", "commands_per_call", "evalsha_per_call"),
        )
        figures["loadavg_end"] = loadavg()
        return figures


def pid_of(proc: Any) -> int:
    assert proc is not None
    return int(proc.pid)


def print_round(r: dict[str, Any]) -> None:
    top = ", ".join(f"{k} {v:.3f}" for k, v in list(r["by_command_per_packet"].items())[:6])
    print(
        f"{r['topology']:8}: {r['packets_per_s']:7,.0f} packets/s, p50 {r['p50_ms']:.2f} ms, "
        f"p99 {r['p99_ms']:.2f} ms, API {r['api_cpu_us_per_packet']:.0f} us CPU/packet, Redis "
        f"{r['redis_cpu_us_per_packet']:.0f} us, {r['commands_per_packet']:.3f} commands/packet "
        f"({top}), {r['reads_per_packet']:.3f} reads/packet, errors {r['errors']}"
    )


def problems(figures: dict[str, Any]) -> list[str]:
    out = [f"{r['topology']}: {r['errors']} refused" for r in figures["rounds"] if r["errors"]]
    out += [
        f"drain {d['topology']}: {d['finished']} of {d['calls']} calls reached a final state"
        for d in figures["drains"]
        if d["finished"] < d["calls"]
    ]
    return out


def run(options: Options) -> Outcome:
    figures = uvloop.run(measure(QUICK if options.quick else Plan(), options))
    lines = cluster_report.section(figures, command("cluster"))
    return Outcome(lines, figures, problems(figures))
